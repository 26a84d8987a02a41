"""A real HTTP server speaking OPA's REST Data API, deciding with the embedded engine.

There is no `opa` binary here; this speaks the same wire protocol (``POST /v1/data/<path>``
with ``{"input": ...}`` -> ``{"result", "decision_id", "provenance"}``, ``GET /health``), and
can be told to fail in each way a real OPA server can: an error status, a body that is not
JSON, a 200 without ``result``, a slow answer, a dropped connection, unhealthy bundles.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sidecar.policy import EmbeddedEngine


class FakeOpa:
    def __init__(
        self,
        policy_dir: Path,
        query: str = "data.agentsidecar.authz.decision",
        *,
        unix_socket: Path | None = None,
    ) -> None:
        self.engine = EmbeddedEngine.from_dir(policy_dir, query, workers=2)
        self.path = "/v1/data/" + query.removeprefix("data.").replace(".", "/")
        self.fault: str | None = None  # "status:500", "malformed", "no_result", "not_object",
        #                                "delay:SECONDS", "drop"
        self.healthy = True
        self.health_checks = 0  # ``GET /health`` requests received (a barrier for readiness)
        self.requests: list[dict[str, Any]] = []
        self.decision_ids: list[str] = []  # every decision_id answered, in order
        opa = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def address_string(self) -> str:
                return "opa-client"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/health"):
                    opa.health_checks += 1
                    self._send(200 if opa.healthy else 500, b"{}")
                else:
                    self._send(404, b'{"code": "not_found"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                opa.requests.append({"path": self.path, "body": body})
                fault = opa.fault or ""
                if fault.startswith("delay:"):
                    time.sleep(float(fault.split(":")[1]))
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault.startswith("status:"):
                    self._send(int(fault.split(":")[1]), b'{"code": "internal_error"}')
                    return
                if fault == "malformed":
                    self._send(200, b'{"result": {"effect": "allow"')
                    return
                if fault == "not_object":
                    self._send(200, b'["result"]')
                    return
                answer: dict[str, Any] = {
                    "decision_id": str(uuid.uuid4()),
                    "provenance": {
                        "version": "fake",
                        "bundles": {"authz": {"revision": opa.engine.revision}},
                    },
                }
                opa.decision_ids.append(answer["decision_id"])
                if self.path.split("?")[0] == opa.path and fault != "no_result":
                    result = opa.engine.evaluate_sync(body.get("input", {}))
                    if result.defined:
                        answer["result"] = result.value
                self._send(200, json.dumps(answer).encode())

        if unix_socket is not None:

            class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True

            self._server: socketserver.BaseServer = Server(str(unix_socket), Handler)
            self.url = f"unix://{unix_socket}"
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self._server.daemon_threads = True
            host, port = self._server.server_address[:2]
            self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpa:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.engine.close()
