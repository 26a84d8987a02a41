"""A small OpenAI-compatible model server for the demo, the tests and the benchmark.

``POST /v1/responses`` and ``POST /v1/embeddings`` speak those APIs' wire formats
(examples/demo/openai_wire.py); the script's options apply to them too.

``POST /v1/chat/completions`` answers ``reply`` (default: an echo of the last user message)
as a ``chat.completion``, or with ``stream: true`` as server-sent ``chat.completion.chunk``
events, a usage chunk when ``stream_options.include_usage`` is set, and ``[DONE]``. Usage is
counted as one token per word. ``cut_after`` breaks a stream off after that many chunks
(no ``[DONE]``). Every request is recorded (headers and JSON body) in ``received``.

    python examples/demo/model_server.py --port 8082
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

try:
    from examples.demo import openai_wire
    from examples.demo.scripted_http import ScriptedHandler, ScriptedServer, serve_forever
except ImportError:  # run as a script: python examples/demo/model_server.py
    import openai_wire  # type: ignore[no-redef]
    from scripted_http import (  # type: ignore[no-redef]
        ScriptedHandler,
        ScriptedServer,
        serve_forever,
    )

__all__ = ["ModelServer", "ReceivedModelCall"]


@dataclass
class ReceivedModelCall:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Script:
    reply: str | None = None
    cut_after: int | None = None
    received: list[ReceivedModelCall] = field(default_factory=list)
    # The reply carries the Authorization header it got (a provider echoing its key).
    echo_key: bool = False
    # Answer this HTTP status with an OpenAI-shaped error instead.
    error_status: int | None = None
    # Responses: also call this function (name, JSON arguments).
    function_call: tuple[str, str] | None = None
    # A slow drip: after this many events, wait for ``gate`` before sending the rest.
    gate_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    # Set when the drip gave up waiting for ``gate`` (nobody read the first events in time).
    gate_timed_out: bool = False
    # Responses: stream the reply in pieces of this many characters (default: by word).
    piece_chars: int | None = None
    # Headers sent with error_status (Retry-After, ...), and the error's message.
    error_headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "scripted failure"
    # Answer exactly this (a unary JSON object) or these (SSE data events; "[DONE]" as is).
    answer: dict[str, Any] | None = None
    events: list[Any] | None = None
    # How many of ``events`` were written (a slow reader holds the provider back).
    sent_events: int = 0


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class _Handler(ScriptedHandler):
    server: ScriptedServer[_Script]

    def do_POST(self) -> None:
        body = json.loads(self.read_body())
        script = self.server.script
        script.received.append(
            ReceivedModelCall({k.lower(): v for k, v in self.headers.items()}, body)
        )
        if script.error_status is not None:
            error = {"message": script.error_message, "type": "server_error", "code": "scripted"}
            self.send_json(script.error_status, {"error": error}, script.error_headers)
            return
        if script.answer is not None and not body.get("stream"):
            self.send_json(200, script.answer)
            return
        if script.events is not None and body.get("stream"):
            self._scripted_events(script)
            return
        if self.path.rstrip("/").endswith("/responses"):
            self._responses(body, script)
            return
        if self.path.rstrip("/").endswith("/embeddings"):
            self.send_json(200, openai_wire.embeddings(body))
            return
        text = (
            script.reply
            if script.reply is not None
            else "echo: " + _last_user_text(body.get("messages") or [])
        )
        words = text.split(" ")
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        }
        base = {"id": "chatcmpl-1", "created": 1700000000, "model": body.get("model")}
        if not body.get("stream"):
            answer = base | {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            self.send_json(200, answer)
            return
        self.start_event_stream()
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        for i, piece in enumerate(pieces):
            if script.cut_after is not None and i >= script.cut_after:
                return  # broken off: no [DONE]
            last = i == len(pieces) - 1
            chunk = base | {
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": piece} | ({"role": "assistant"} if i == 0 else {}),
                        "finish_reason": "stop" if last else None,
                    }
                ],
            }
            self._event(chunk)
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event(base | {"object": "chat.completion.chunk", "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, value: Any) -> None:
        self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")
        self.wfile.flush()

    def _scripted_events(self, script: _Script) -> None:
        self.start_event_stream()
        try:
            for event in script.events or []:
                if event == "[DONE]":
                    self.wfile.write(b"data: [DONE]\n\n")
                elif isinstance(event, dict) and "type" in event:
                    self.wfile.write(openai_wire.sse_named(event))
                else:
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
                script.sent_events += 1
        except OSError:
            return

    def _responses(self, body: dict[str, Any], script: _Script) -> None:
        text = script.reply if script.reply is not None else "echo: " + openai_wire.input_text(body)
        if script.echo_key:
            text += " key=" + self.headers.get("Authorization", "")
        if not body.get("stream"):
            answer = openai_wire.response_object(body, text, function_call=script.function_call)
            self.send_json(200, answer)
            return
        self.start_event_stream()
        events = openai_wire.response_events(
            body, text, function_call=script.function_call, piece_chars=script.piece_chars
        )
        for i, event in enumerate(events):
            if script.cut_after is not None and i >= script.cut_after:
                return  # broken off: no response.completed
            if script.gate_after is not None and i == script.gate_after:
                script.gate_timed_out = not script.gate.wait(30)
            self.wfile.write(openai_wire.sse_named(event))
            self.wfile.flush()


class ModelServer:
    """Runs the server on a free loopback port; ``url`` is its OpenAI ``base_url``."""

    def __init__(self, port: int = 0, *, reply: str | None = None) -> None:
        self._server = ScriptedServer(port, _Handler, _Script(reply=reply))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    @property
    def received(self) -> list[ReceivedModelCall]:
        return self._server.script.received

    def script(
        self,
        *,
        reply: str | None = None,
        cut_after: int | None = None,
        echo_key: bool = False,
        error_status: int | None = None,
        function_call: tuple[str, str] | None = None,
        gate_after: int | None = None,
        piece_chars: int | None = None,
        error_headers: dict[str, str] | None = None,
        error_message: str = "scripted failure",
        answer: dict[str, Any] | None = None,
        events: list[Any] | None = None,
    ) -> threading.Event:
        """Set how the next requests are answered; returns the gate a slow drip waits on."""
        script = self._server.script
        script.reply = reply
        script.cut_after = cut_after
        script.echo_key = echo_key
        script.error_status = error_status
        script.function_call = function_call
        script.gate_after = gate_after
        script.gate = threading.Event()
        script.gate_timed_out = False
        script.piece_chars = piece_chars
        script.error_headers = dict(error_headers or {})
        script.error_message = error_message
        script.answer = answer
        script.events = events
        script.sent_events = 0
        return script.gate

    @property
    def sent_events(self) -> int:
        return self._server.script.sent_events

    @property
    def gate_timed_out(self) -> bool:
        return self._server.script.gate_timed_out

    def __enter__(self) -> ModelServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


if __name__ == "__main__":
    serve_forever(ModelServer, 8082, __doc__)
