"""The webhook's HTTPS server: ``admission.k8s.io/v1`` AdmissionReview in, JSONPatch out.

``POST /mutate/pod`` is called by the webhook entry that selects pods by label,
``POST /mutate/namespace`` by the one that selects enrolled namespaces (so the webhook knows
which matched without reading namespaces: it needs no API access at all). ``/mutate`` is
``/mutate/pod``. ``GET /healthz``, ``GET /readyz``.

The patch is the RFC 6902 diff of the original and the mutated pod (``jsonpatch``), not
hand-written index paths. TLS certificates and the webhook config are re-read when their
files change (cert-manager rotates certificates in place); each new connection uses the
current certificate. Bad input is answered, never crashed on: non-JSON, wrong Content-Type,
no ``request``, a missing, repeated or chunked length, a short body -> HTTP 400; a body over
``max_request_bytes`` -> 413; a body that stops arriving -> 408 (``read_timeout_s`` bounds
every read, the TLS handshake and headers too); a non-Pod kind, an invalid annotation or a
Pod of a shape no API server sends -> an AdmissionReview with ``allowed: false`` and the
reason. At most ``max_connections`` are served at once. Every decision is logged.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jsonpatch

from sidecar.errors import SidecarError
from sidecar.httpserve import CappedHTTPServer, FramingError, read_body
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.webhook.inject import AdmissionError, mutate
from sidecar.webhook.settings import WebhookSettings, load_webhook_settings

__all__ = ["WebhookServer", "review"]

log = logging.getLogger(__name__)


class BadRequest(SidecarError):
    """Answered with HTTP ``status`` (400 unless said) and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def review(body: bytes, *, enrolled_namespace: bool, settings: WebhookSettings) -> dict[str, Any]:
    """Answer one AdmissionReview. Raises :class:`BadRequest` for what is not one; a request
    whose Pod has a shape no API server sends is refused (``allowed: false``), never a crash."""
    try:
        doc = loads_strict(body, "the body")
    except StrictJsonError as exc:
        raise BadRequest(f"the body is not JSON the webhook accepts: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "AdmissionReview":
        raise BadRequest("the body is not an AdmissionReview")
    if doc.get("apiVersion") != "admission.k8s.io/v1":
        raise BadRequest(f"apiVersion {doc.get('apiVersion')!r} is not admission.k8s.io/v1")
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadRequest("the AdmissionReview has no request (or no request.uid)")
    uid = request["uid"]
    kind = _object(request.get("kind"))
    pod = request.get("object")
    metadata = _object(pod.get("metadata")) if isinstance(pod, dict) else {}
    namespace = str(request.get("namespace") or metadata.get("namespace") or "")
    name = str(metadata.get("name") or f"{metadata.get('generateName') or ''}*")
    facts = {"uid": uid, "namespace": namespace, "pod": name, "operation": request.get("operation")}
    if kind.get("kind") != "Pod" or kind.get("group", "") != "":
        log.warning("admission refused", extra=facts | {"reason": f"kind {kind} is not a Pod"})
        return _response(uid, allowed=False, message="agent-sidecar's webhook handles Pods only")
    if not isinstance(pod, dict):
        return _response(uid, allowed=False, message="the request carries no Pod object")
    try:
        result = mutate(
            pod,
            namespace=namespace,
            operation=str(request.get("operation", "")),
            enrolled_namespace=enrolled_namespace,
            settings=settings,
        )
    except AdmissionError as exc:
        log.warning("admission refused", extra=facts | {"reason": str(exc)})
        return _response(uid, allowed=False, message=str(exc))
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        # e.g. spec: null, a container that is not an object, annotations as a list
        message = f"the Pod is malformed ({type(exc).__name__}: {exc}); nothing was injected"
        log.warning("admission refused", extra=facts | {"reason": message})
        return _response(uid, allowed=False, message=message)
    log.info("admission", extra=facts | {"injected": result.injected, "reason": result.reason})
    if not result.injected:
        return _response(uid, allowed=True)
    patch = jsonpatch.make_patch(pod, result.pod).patch
    return _response(uid, allowed=True, patch=patch)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _response(
    uid: str, *, allowed: bool, message: str = "", patch: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if message:
        response["status"] = {"code": 403 if not allowed else 200, "message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class _Reloading:
    """A value rebuilt from files when their modification times change."""

    def __init__(self, paths: list[Path], build: Any, what: str) -> None:
        self._paths = paths
        self._build = build
        self._what = what
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.value = build()
        self.reloads = 0

    def _stamps(self) -> tuple[float, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in self._paths)

    def current(self) -> Any:
        try:
            stamp = self._stamps()
        except OSError:
            return self.value  # mid-rotation: keep what works
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self.value = self._build()
                        self.reloads += 1
                        log.info(f"{self._what} reloaded")
                    except Exception as exc:  # keep serving with the previous one
                        log.error(
                            f"{self._what} reload failed; keeping the previous one",
                            extra={"error": str(exc)},
                        )
                    self._stamp = stamp
        return self.value


class WebhookServer:
    def __init__(
        self,
        config: Path,
        tls_cert: Path,
        tls_key: Path,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - the API server must reach it
        port: int = 8443,
    ) -> None:
        self.settings = _Reloading([config], lambda: load_webhook_settings(config), "config")

        def context() -> ssl.SSLContext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            return ctx

        self.tls = _Reloading([tls_cert, tls_key], context, "TLS certificate")
        server = self

        initial = self.settings.value

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Every read on the connection (TLS handshake, headers, body) must make progress
            # within this; a request line or headers that never come close the connection.
            timeout = initial.read_timeout_s

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path in ("/healthz", "/readyz"):
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                if path not in ("/mutate", "/mutate/pod", "/mutate/namespace"):
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                settings: WebhookSettings = server.settings.current()
                try:
                    body = self._body(settings.max_request_bytes)
                    answer = review(
                        body,
                        enrolled_namespace=path == "/mutate/namespace",
                        settings=settings,
                    )
                except BadRequest as exc:
                    log.warning("bad admission request", extra={"error": str(exc)})
                    self._send(exc.status, {"error": str(exc)})
                    return
                except Exception:  # never a dropped connection without an answer
                    log.exception("admission review failed")
                    self.close_connection = True
                    self._send(500, {"error": "the webhook failed to review this request"})
                    return
                self._send(200, answer)

            def _body(self, limit: int) -> bytes:
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    raise BadRequest(f"Content-Type must be application/json, not {ctype!r}")
                try:
                    return read_body(self, limit)
                except FramingError as exc:
                    raise BadRequest(str(exc), exc.status) from exc

        class Server(CappedHTTPServer):
            max_connections = initial.max_connections

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = self.socket.accept()
                ctx: ssl.SSLContext = server.tls.current()
                # The handshake happens in the handler thread, not in this accept loop.
                return ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                log.warning("connection failed", extra={"client": str(client_address)})

        self._httpd = Server((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> WebhookServer:
        self._thread.start()
        log.info("webhook serving", extra={"port": self.port})
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
