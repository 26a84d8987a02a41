"""A small OpenAI-compatible model server for the demo, the tests and the benchmark.

``POST /v1/chat/completions`` answers ``reply`` (default: an echo of the last user message)
as a ``chat.completion``, or with ``stream: true`` as server-sent ``chat.completion.chunk``
events, a usage chunk when ``stream_options.include_usage`` is set, and ``[DONE]``. Usage is
counted as one token per word. ``cut_after`` breaks a stream off after that many chunks
(no ``[DONE]``). Every request is recorded (headers and JSON body) in ``received``.

    python examples/demo/model_server.py --port 8082
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: _Script

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        script = self.server.script
        script.received.append(
            ReceivedModelCall({k.lower(): v for k, v in self.headers.items()}, body)
        )
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
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
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


class ModelServer:
    """Runs the server on a free loopback port; ``url`` is its OpenAI ``base_url``."""

    def __init__(self, port: int = 0, *, reply: str | None = None) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.script = _Script(reply=reply)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def received(self) -> list[ReceivedModelCall]:
        return self._server.script.received

    def script(self, *, reply: str | None = None, cut_after: int | None = None) -> None:
        self._server.script.reply = reply
        self._server.script.cut_after = cut_after

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    with ModelServer(args.port) as server:
        threading.Event().wait()
