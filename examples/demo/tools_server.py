"""An example tool upstream: a tiny ticketing, knowledge-base, payments and partner API.

A real HTTP server on loopback that records every request it receives (method, path, query,
headers, body), so the demo can show what an upstream saw and tests can assert that a denied
call never arrived. Run alone: ``python examples/demo/tools_server.py --port 8081``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Received", "Reply", "ToolServer"]


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    # The TLS client certificate's subjectAltName entries, when the client presented one.
    peer_san: tuple[tuple[str, str], ...] = ()

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Received], Reply]


def demo_routes() -> dict[tuple[str, str], Route]:
    ids = itertools.count(1001)
    return {
        ("GET", "/tickets/"): lambda r: Reply(
            body={"id": r.path.rsplit("/", 1)[1], "title": "Printer on fire", "status": "open"}
        ),
        ("POST", "/tickets"): lambda r: Reply(201, {"id": str(next(ids)), **(r.json() or {})}),
        ("POST", "/tickets/close"): lambda r: Reply(body={"closed": True}),
        ("GET", "/kb/search"): lambda r: Reply(
            body={"query": dict(r.query).get("q", ""), "hits": ["KB-1: restart the printer"]}
        ),
        ("POST", "/refunds"): lambda r: Reply(body={"refund_id": f"R-{next(ids)}", **r.json()}),
        ("POST", "/notify"): lambda r: Reply(202, {"accepted": True, "received": r.json()}),
    }


def _peer_san(connection: Any) -> tuple[tuple[str, str], ...]:
    getpeercert = getattr(connection, "getpeercert", None)
    cert = getpeercert() if getpeercert else None
    return tuple(cert.get("subjectAltName", ())) if cert else ()


class ToolServer:
    """A threaded HTTP server; ``routes`` maps (method, path or path prefix ending in /)."""

    def __init__(
        self,
        routes: dict[tuple[str, str], Route] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ):
        self.routes = dict(demo_routes() if routes is None else routes)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes; without this, Nagle plus delayed
                # ACKs stall every keep-alive response by ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Received(
                    method=self.command,
                    path=parts.path,
                    query=parse_qsl(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    peer_san=_peer_san(self.connection),
                )
                with server._lock:
                    server.received.append(request)
                reply = server._route(request)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                raw = reply.body
                if not isinstance(raw, bytes):
                    raw = json.dumps(raw).encode() if raw is not None else b""
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(raw)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _route(self, request: Received) -> Reply:
        exact = self.routes.get((request.method, request.path))
        if exact is not None:
            return exact(request)
        for (method, path), route in self.routes.items():
            if method == request.method and path.endswith("/") and request.path.startswith(path):
                return route(request)
        return Reply(404, {"error": f"no route for {request.method} {request.path}"})

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def start(self) -> ToolServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ToolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    tools = ToolServer(port=args.port).start()
    print(f"tool upstream on {tools.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        tools.stop()
