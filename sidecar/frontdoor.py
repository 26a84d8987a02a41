"""The OpenAI-compatible front door: an HTTP listener on loopback, so that an agent built on
the unmodified ``openai`` SDK is governed by setting ``base_url`` (``OPENAI_BASE_URL``).

    POST /v1/chat/completions   unary, or ``stream: true`` as server-sent events
    GET  /v1/models             only the aliases policy lets this caller use

Every request goes through the same attest -> decide -> relay -> record path as CallModel.
Identity: in ``pod`` mode the pod's SVID names the caller (the SDK's api key is ignored); in
``jwt`` mode the api key *is* the agent's JWT-SVID (``Authorization: Bearer``). The agent's
``Authorization`` header is never forwarded: the provider gets the sidecar's key.
Sidecar headers: ``x-agent-sidecar-task-id``, ``x-agent-sidecar-intent``,
``x-agent-sidecar-approval-id`` (retry after a step-up) and ``x-agent-sidecar-delegation``
(comma-separated JWT-SVIDs, outermost first).

Errors use OpenAI's shape, ``{"error": {"message", "type", "code", "param", ...}}`` plus
``decision_id``, ``reasons`` and, for a step-up, ``approval_id`` (a success carries the
decision id in the ``x-agent-sidecar-decision-id`` header):

    401 authentication_error   the caller could not be attested
    403 permission_error       policy denied (or could not decide)
    409 approval_required      a human must approve this exact request; retry with the id
    400 invalid_request_error  404 not_found_error (unknown model)
    429 rate_limit_error       a token budget or the step-up flood limit
    502/503/504                the provider failed (or answered too much), is unreachable, or
                               took too long

409 rather than 202: the SDK treats any 2xx as a completion, and the request did *not*
happen. Sidecar refusals carry ``x-should-retry: false`` so the SDK does not repeat them.
A stream that breaks after it started ends with an ``error`` event (the SDK raises
``APIError``) and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc

from sidecar.config import Settings
from sidecar.httpserve import CappedHTTPServer, FramingError, read_body
from sidecar.identity import CallContext
from sidecar.model_calls import ModelCall
from sidecar.pipeline import CallResult, Mediator
from sidecar.policy import PolicyEngine
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["FrontDoor", "error_body"]

log = logging.getLogger(__name__)

_S = grpc.StatusCode
_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    _S.UNAUTHENTICATED: (401, "authentication_error"),
    _S.PERMISSION_DENIED: (403, "permission_error"),
    _S.FAILED_PRECONDITION: (409, "approval_required"),
    _S.INVALID_ARGUMENT: (400, "invalid_request_error"),
    _S.NOT_FOUND: (404, "not_found_error"),
    _S.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    _S.UNAVAILABLE: (503, "api_error"),
    _S.DEADLINE_EXCEEDED: (504, "timeout_error"),
    _S.INTERNAL: (500, "api_error"),
}
# Codes whose gRPC status reads differently over HTTP: a too-large answer is the provider's
# fault (502), not the caller's quota (429).
_CODE_STATUS: dict[str, tuple[int, str]] = {
    "upstream_response_too_large": (502, "upstream_error"),
}
_RETRYABLE = {"upstream_unavailable", "upstream_timeout", "identity_not_ready"}


def error_body(result: CallResult) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI-shaped error for a call that did not complete."""
    status, kind = _CODE_STATUS.get(result.code) or _STATUS.get(result.status, (500, "api_error"))
    if result.upstream_status:
        status = result.upstream_status if 400 <= result.upstream_status < 500 else 502
        kind = "upstream_error"
    error: dict[str, Any] = {
        "message": result.message or result.code,
        "type": kind,
        "code": result.code,
        "param": None,
        "decision_id": result.decision_id,
        "reasons": list(result.decision.reasons) if result.decision else [],
    }
    if result.approval_id:
        error["approval_id"] = result.approval_id
    return status, {"error": error}


class FrontDoor:
    """Serves the front door on its own threads; calls run on the sidecar's event loop."""

    def __init__(self, settings: Settings, mediator: Mediator, engine: PolicyEngine) -> None:
        self._settings = settings
        self._mediator = mediator
        host, _, port = settings.frontdoor.listen.rpartition(":")
        door = settings.frontdoor
        # Idle keep-alive and half-open connections, and bodies that stop arriving, time out.
        handler = type("Handler", (_Handler,), {"door": self, "timeout": door.read_timeout_s})
        server = type("Server", (_Server,), {"max_connections": door.max_connections})
        self._server = server((host.strip("[]"), int(port)), handler)
        self.port = self._server.server_address[1]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="frontdoor", daemon=True
        )
        self._thread.start()
        log.info("front door listening", extra={"address": self._settings.frontdoor.listen})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- called from handler threads -------------------------------------------------------

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_s(self) -> float | None:
        wait = self._settings.frontdoor.wait_for_approval_s
        if not wait:
            return None
        longest = max((p.timeout_s for p in self._settings.providers.values()), default=60.0)
        return wait + longest


class _Server(CappedHTTPServer):
    request_queue_size = 128  # the listen backlog (the standard library's default is 5)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    door: FrontDoor
    protocol_version = "HTTP/1.1"
    server_version = "agent-sidecar"

    def log_message(self, *args: Any) -> None:  # the audit log and JSON logs say it all
        pass

    def _context(self) -> CallContext:
        metadata: list[tuple[str, str]] = []
        auth = self.headers.get("Authorization")
        if auth:
            metadata.append(("authorization", auth))
        trace = self.headers.get("traceparent")
        if trace:
            metadata.append(("traceparent", trace))
        return CallContext(metadata=tuple(metadata), peer=f"ipv4:{self.client_address[0]}")

    def _send_json(
        self, status: int, body: Any, *, retry: bool = True, decision_id: str = ""
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if decision_id:
            self.send_header("x-agent-sidecar-decision-id", decision_id)
        self.send_header("Content-Length", str(len(data)))
        if not retry:
            self.send_header("x-should-retry", "false")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, result: CallResult) -> None:
        status, body = error_body(result)
        self._send_json(status, body, retry=result.code in _RETRYABLE)

    def _plain_error(self, status: int, code: str, message: str) -> None:
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": None,
            }
        }
        self._send_json(status, body, retry=False)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._plain_error(404, "not_found", f"no route {self.path}")
            return
        result, models = self.door.run(self.door._mediator.list_models(self._context()))
        if result.status != grpc.StatusCode.OK:
            self._send_error(result)
            return
        self._send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "agent-sidecar"}
                    for m in models
                ],
            },
        )

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._plain_error(404, "not_found", f"no route {self.path}")
            return
        try:  # exact framing (duplicate or conflicting lengths, CL+TE, short bodies: 400)
            raw = read_body(self, self.door._settings.frontdoor.max_request_bytes)
        except FramingError as exc:
            self._plain_error(exc.status, exc.code, str(exc))
            return
        try:
            body = loads_strict(raw or b"null", "the body")
        except StrictJsonError as exc:
            self._plain_error(400, "invalid_json", str(exc))
            return
        if not isinstance(body, dict):
            self._plain_error(400, "invalid_json", "the body must be a JSON object")
            return
        parameters = {
            k: v
            for k, v in body.items()
            if k not in ("model", "messages", "stream", "stream_options")
        }
        delegation = self.headers.get("x-agent-sidecar-delegation", "")
        call = ModelCall(
            model=str(body.get("model") or ""),
            messages_json=json.dumps(body.get("messages")),
            parameters_json=json.dumps(parameters),
            task_id=self.headers.get("x-agent-sidecar-task-id", ""),
            intent=self.headers.get("x-agent-sidecar-intent", ""),
            approval_id=self.headers.get("x-agent-sidecar-approval-id", ""),
            no_wait=self.door.wait_s() is None,
            delegation_chain=tuple(t.strip() for t in delegation.split(",") if t.strip()),
            stream=bool(body.get("stream")),
        )
        if call.stream:
            self._stream(call)
            return
        result = self.door.run(
            self.door._mediator.call_model(
                "ChatCompletions",
                call,
                context=self._context(),
                time_remaining=self.door.wait_s(),
            )
        )
        if result.status != grpc.StatusCode.OK:
            self._send_error(result)
            return
        self._send_json(200, result.completion, decision_id=result.decision_id)

    def _stream(self, call: ModelCall) -> None:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        assert self.door.loop is not None
        future = asyncio.run_coroutine_threadsafe(
            self.door._mediator.call_model(
                "ChatCompletions",
                call,
                context=self._context(),
                time_remaining=self.door.wait_s(),
                emit=lambda kind, value: events.put((kind, value)),
            ),
            self.door.loop,
        )
        future.add_done_callback(lambda _: events.put(("end", None)))
        started = False
        while True:
            kind, value = events.get()
            if kind == "start":
                started = True
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("x-agent-sidecar-decision-id", value.decision_id)
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
            elif kind == "chunk" and started:
                self._event(value)
            elif kind == "end":
                break
        result: CallResult = future.result()
        if not started:
            self._send_error(result)
            return
        if result.status == grpc.StatusCode.OK:
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            self._event(error_body(result)[1])
        self.wfile.flush()

    def _event(self, value: Any) -> None:
        try:
            self.wfile.write(
                b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"
            )
            self.wfile.flush()
        except OSError:  # the agent went away; the call still completes and is audited
            pass
