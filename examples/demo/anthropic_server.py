"""A stand-in Anthropic provider that speaks the real Messages API wire format, for the demo,
the tests and the benchmark.

``POST /v1/messages`` answers a ``message`` object, or with ``stream: true`` the real event
sequence: ``message_start`` (``usage.input_tokens``), ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta``; ``input_json_delta`` for a scripted ``tool_use``
block), ``content_block_stop``, ``message_delta`` (``stop_reason``, ``usage.output_tokens``)
and ``message_stop``, each as ``event: NAME`` + ``data: JSON``. ``POST
/v1/messages/count_tokens`` answers ``{"input_tokens": N}``. Errors use Anthropic's shape,
``{"type": "error", "error": {"type", "message"}, "request_id"}``; a request without
``anthropic-version`` or ``max_tokens`` is refused as the real API refuses it.

Tokens are counted as one a word. What a test can script (:meth:`AnthropicServer.script`):
``reply`` (default: ``echo: `` and the last user text), ``pieces`` (the exact text deltas),
``tool_use`` (a tool call block after the text), ``cut_after`` (break the stream off after
that many text deltas: no ``message_delta`` / ``message_stop``), ``drip`` (a
``threading.Event`` every delta after the first waits for: a slow provider the test
releases), ``error_after`` (an ``error`` event instead of that delta: overloaded mid-stream),
``echo_credentials`` (the reply quotes the ``x-api-key`` and ``Authorization`` it
got), ``error`` (answer ``(status, type, message)``), ``cache_read`` (cache tokens in usage),
``content`` (the unary answer's content blocks, verbatim: citations, server tool results...)
and ``events`` (a stream's events, verbatim: what a real stream of thinking, citations or
server tools sends; a list without ``message_stop`` ends as a cut stream).
Every request is recorded (path, lower-cased headers, JSON body) in ``received``.

    python examples/demo/anthropic_server.py --port 8083
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

try:
    from examples.demo.scripted_http import ScriptedHandler, ScriptedServer, serve_forever
except ImportError:  # run as a script: python examples/demo/anthropic_server.py
    from scripted_http import (  # type: ignore[no-redef]
        ScriptedHandler,
        ScriptedServer,
        serve_forever,
    )

__all__ = ["AnthropicServer", "ReceivedCall"]

_DRIP_BOUND_S = 30.0  # a test that forgets to release the drip still ends


@dataclass
class ReceivedCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Script:
    reply: str | None = None
    pieces: list[str] | None = None
    tool_use: dict[str, Any] | None = None
    cut_after: int | None = None
    drip: threading.Event | None = None
    echo_credentials: bool = False
    error: tuple[int, str, str] | None = None
    cache_read: int = 0
    error_after: int | None = None
    content: list[dict[str, Any]] | None = None
    events: list[dict[str, Any]] | None = None
    received: list[ReceivedCall] = field(default_factory=list)
    delta_sent: threading.Event = field(default_factory=threading.Event)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_result":
                parts.append(_text(block.get("content")))
            elif block.get("type") == "tool_use":
                parts.append(json.dumps(block.get("input")))
        return " ".join(parts)
    return ""


def _input_tokens(body: dict[str, Any]) -> int:
    texts = [_text(body.get("system"))]
    texts += [_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
    return sum(len(t.split()) for t in texts)


class _Handler(ScriptedHandler):
    server: ScriptedServer[_Script]

    def do_POST(self) -> None:
        raw = self.read_body()
        script = self.server.script
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        script.received.append(ReceivedCall(self.path, headers, body))
        if script.error is not None:
            self._error(*script.error)
            return
        if "anthropic-version" not in headers:
            self._error(400, "invalid_request_error", "anthropic-version: header is required")
            return
        if self.path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": _input_tokens(body)})
            return
        if self.path != "/v1/messages":
            self._error(404, "not_found_error", f"no route {self.path}")
            return
        if not isinstance(body.get("max_tokens"), int):
            self._error(400, "invalid_request_error", "max_tokens: Field required")
            return
        text = self._reply_text(body, headers)
        pieces = script.pieces or [
            w + (" " if i < len(text.split(" ")) - 1 else "") for i, w in enumerate(text.split(" "))
        ]
        usage = {
            "input_tokens": _input_tokens(body),
            "output_tokens": len("".join(pieces).split()),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": script.cache_read,
        }
        if body.get("stream") and script.events is not None:
            self._verbatim(script.events)
            return
        if body.get("stream"):
            self._stream(body, pieces, usage)
            return
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(pieces)}]
        if script.content is not None:
            content = list(script.content)
        if script.tool_use is not None:
            content.append({"type": "tool_use", "id": "toolu_01", **script.tool_use})
        self._json(
            200,
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": content,
                "stop_reason": "tool_use" if script.tool_use else "end_turn",
                "stop_sequence": None,
                "usage": usage,
            },
        )

    def _reply_text(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        script = self.server.script
        if script.echo_credentials:
            return (
                f"x-api-key={headers.get('x-api-key', '')} "
                f"authorization={headers.get('authorization', '')}"
            )
        if script.reply is not None:
            return script.reply
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return "echo: " + _text(message.get("content"))
        return "echo:"

    def _stream(self, body: dict[str, Any], pieces: list[str], usage: dict[str, Any]) -> None:
        script = self.server.script
        self.start_event_stream()
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage | {"output_tokens": 1},
        }
        self._event("message_start", {"type": "message_start", "message": message})
        self._event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self._event("ping", {"type": "ping"})
        for i, piece in enumerate(pieces):
            if script.cut_after is not None and i >= script.cut_after:
                return  # broken off: no message_delta, no message_stop
            if script.error_after is not None and i >= script.error_after:
                error = {"type": "overloaded_error", "message": "Overloaded"}
                self._event("error", {"type": "error", "error": error})
                return
            if i and script.drip is not None:
                script.drip.wait(_DRIP_BOUND_S)
            self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            script.delta_sent.set()
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        if script.tool_use is not None:
            start = {"type": "tool_use", "id": "toolu_01", "name": script.tool_use["name"]}
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": start | {"input": {}}},
            )
            partial = json.dumps(script.tool_use.get("input", {}))
            half = len(partial) // 2
            for part in (partial[:half], partial[half:]):
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                )
            self._event("content_block_stop", {"type": "content_block_stop", "index": 1})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use" if script.tool_use else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        self._event("message_stop", {"type": "message_stop"})

    def _verbatim(self, events: list[dict[str, Any]]) -> None:
        self.start_event_stream()
        for event in events:
            self._event(str(event.get("type")), event)

    def _event(self, name: str, value: Any) -> None:
        try:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(value)}\n\n".encode())
            self.wfile.flush()
        except OSError:
            pass  # the reader went away

    def _json(self, status: int, value: Any) -> None:
        self.send_json(status, value, {"request-id": "req_01"})

    def _error(self, status: int, kind: str, message: str) -> None:
        self._json(
            status,
            {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_01"},
        )


class AnthropicServer:
    """Runs the stand-in on a free loopback port; ``url`` is its base URL (no ``/v1``)."""

    def __init__(self, port: int = 0) -> None:
        self._server = ScriptedServer(port, _Handler, _Script())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def received(self) -> list[ReceivedCall]:
        return self._server.script.received

    @property
    def delta_sent(self) -> threading.Event:
        """Set once a text delta has been written (for a test that cuts in mid-stream)."""
        return self._server.script.delta_sent

    def script(
        self,
        *,
        reply: str | None = None,
        pieces: list[str] | None = None,
        tool_use: dict[str, Any] | None = None,
        cut_after: int | None = None,
        drip: threading.Event | None = None,
        echo_credentials: bool = False,
        error: tuple[int, str, str] | None = None,
        cache_read: int = 0,
        error_after: int | None = None,
        content: list[dict[str, Any]] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        received = self._server.script.received
        self._server.script = _Script(
            reply,
            pieces,
            tool_use,
            cut_after,
            drip,
            echo_credentials,
            error,
            cache_read,
            error_after,
            content,
            events,
            received,
        )

    def __enter__(self) -> AnthropicServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server.script.drip is not None:
            self._server.script.drip.set()
        self._server.stop()


if __name__ == "__main__":
    serve_forever(AnthropicServer, 8083, __doc__)
