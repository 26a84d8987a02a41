"""A real OPA bundle server for tests: HTTP on loopback, in a thread.

Serves the bundles a test publishes with their ETag, answers ``304`` to a matching
``If-None-Match``, supports long polling (``Prefer: modes=long-poll;wait=N`` held until a new
bundle is published, answered with OPA's bundle content type), can require a bearer token, and
has failing (HTTP 500), slow (held until released), drip (the body one byte per
``drip_interval`` until released), drip_headers (one header line per ``drip_interval``) and
short (half the announced body) modes. ``hold_long_polls = False`` answers a long poll at once
(a proxy that drops ``Prefer``); ``honour_etag = False`` never answers 304. Every request's
headers are kept.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LONG_POLL_TYPE = "application/vnd.openpolicyagent.bundles"


class BundleServer:
    def __init__(self, *, token: str = "", tls: ssl.SSLContext | None = None) -> None:
        self.bundles: dict[str, tuple[bytes, str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"  # ok | fail | slow | drip | drip_headers | short
        self.hold_long_polls = True
        self.honour_etag = True
        self.drip_interval = 0.2
        self.dripped = 0  # body bytes sent in drip mode
        self.token = token
        self.release = threading.Event()  # ends a slow answer
        self.changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.tls = tls
        self.client_certs: list[Any] = []
        if tls is not None:  # client certificates required and kept (see ``client_certs``)
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self._httpd.server_address[1]}"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> BundleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.release.set()
        with self.changed:
            self.changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    def publish(self, path: str, blob: bytes, etag: str | None = None) -> str:
        etag = etag or '"' + hashlib.sha256(blob).hexdigest()[:16] + '"'
        with self.changed:
            self.bundles[path] = (blob, etag)
            self.changed.notify_all()
        return etag

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append({"path": request.path, "headers": headers})
        if self.tls is not None:
            self.client_certs.append(request.connection.getpeercert())  # type: ignore[attr-defined]
        if self.mode == "fail":
            request.send_response(500)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if self.mode == "slow":
            self.release.wait(60)
        if self.mode == "drip_headers":
            request.wfile.write(b"HTTP/1.0 200 OK\r\n")
            while not self.release.wait(self.drip_interval):
                request.wfile.write(b"X-Pad: x\r\n")
                request.wfile.flush()
                self.dripped += 1
            return
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            request.send_response(401)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        match = re.fullmatch(r"modes=long-poll;wait=(\d+)", headers.get("prefer", ""))
        wait = int(match.group(1)) if match else 0
        with self.changed:
            current = self.bundles.get(request.path)
            held = wait and self.hold_long_polls
            if held and current is not None and headers.get("if-none-match") == current[1]:
                self.changed.wait_for(
                    lambda: self.bundles.get(request.path) != current or self.release.is_set(),
                    timeout=wait,
                )
                current = self.bundles.get(request.path)
        if current is None:
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        blob, etag = current
        kind = LONG_POLL_TYPE if wait else "application/gzip"
        if self.honour_etag and headers.get("if-none-match") == etag:
            request.send_response(304)
            request.send_header("ETag", etag)
            request.send_header("Content-Type", kind)
            request.end_headers()
            return
        request.send_response(200)
        request.send_header("ETag", etag)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(blob)))
        request.end_headers()
        if self.mode == "short":  # the connection closes before Content-Length bytes
            request.wfile.write(blob[: len(blob) // 2])
            return
        if self.mode != "drip":
            request.wfile.write(blob)
            return
        for i in range(len(blob)):  # a slow-drip server: paced by the event, ended by release
            if self.release.wait(self.drip_interval):
                return
            request.wfile.write(blob[i : i + 1])
            request.wfile.flush()
            self.dripped += 1
