"""What the scripted stand-in providers share (examples/demo/model_server.py,
anthropic_server.py, tests/support/usage_provider.py): a loopback HTTP server on its own
thread whose handlers answer as its ``script`` says, and a quiet handler base."""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

__all__ = ["ScriptedHandler", "ScriptedServer", "serve_forever"]

S = TypeVar("S")


class ScriptedServer(ThreadingHTTPServer, Generic[S]):
    """Served on a daemon thread from :meth:`start` to :meth:`stop`; ``script`` is what the
    handlers read (and record into)."""

    daemon_threads = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], script: S) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.script = script
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def server_bind(self) -> None:
        # Every streamed event leaves when it is written (no Nagle delay behind a small one).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class ScriptedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (kept-alive connections, as a real provider), no access log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, header in (headers or {}).items():
            self.send_header(name, header)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_event_stream(self) -> None:
        """A 200 ``text/event-stream`` whose end is the connection's close."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True


def serve_forever(
    server: Callable[[int], AbstractContextManager[Any]], port: int, doc: str | None
) -> None:
    """``python <stand-in>.py [--port N]``: serve until killed."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args()
    with server(args.port):
        threading.Event().wait()
