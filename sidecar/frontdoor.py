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
from collections.abc import Awaitable
from typing import Any

import grpc
from aiohttp import web

from sidecar.aiohttpserve import BodyError, HttpServer, bind_tcp, call_context, read_body
from sidecar.calls.common import CallResult
from sidecar.calls.models import ModelCalls
from sidecar.config import Settings
from sidecar.model_calls import ModelCall
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
    """Serves the front door on the sidecar's event loop (see :mod:`sidecar.aiohttpserve`)."""

    def __init__(
        self,
        settings: Settings,
        models: ModelCalls,
        engine: PolicyEngine,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._settings = settings
        self._calls = models  # the adapter this door serves
        self._user_header = settings.users.header
        host, _, port = settings.frontdoor.listen.rpartition(":")
        door = settings.frontdoor
        self._server = HttpServer(
            bind_tcp(host.strip("[]"), int(port), reuse_port=reuse_port),
            self._handle,
            max_connections=door.max_connections,
            idle_timeout_s=door.read_timeout_s,
            error_response=_plain_error,
        )
        self.port = self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        await self._server.start()
        log.info("front door listening", extra={"address": self._settings.frontdoor.listen})

    async def stop(self) -> None:
        await self._server.stop()

    def close(self) -> None:
        self._server.close()

    def wait_s(self) -> float | None:
        wait = self._settings.frontdoor.wait_for_approval_s
        if not wait:
            return None
        longest = max((p.timeout_s for p in self._settings.providers.values()), default=60.0)
        return wait + longest

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            return await self._models(request)
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._completions(request)
        return _plain_error(404, "not_found", f"no route {request.method} {request.path}")

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        result, models = await self._calls.list_models(call_context(request, self._user_header))
        if result.status != grpc.StatusCode.OK:
            return _error(result)
        return _json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "agent-sidecar"}
                    for m in models
                ],
            },
        )

    async def _completions(self, request: web.BaseRequest) -> web.StreamResponse:
        door = self._settings.frontdoor
        if request.content_length is None and "chunked" not in request.headers.get(
            "Transfer-Encoding", ""
        ):
            return _plain_error(411, "length_required", "a body with Content-Length is required")
        try:
            raw = await read_body(request, door.max_request_bytes, door.read_timeout_s)
        except BodyError as exc:
            return _plain_error(exc.status, exc.code, str(exc), close=True)
        try:
            body = loads_strict(raw or b"null", "the body")
        except StrictJsonError as exc:
            return _plain_error(400, "invalid_json", str(exc))
        if not isinstance(body, dict):
            return _plain_error(400, "invalid_json", "the body must be a JSON object")
        parameters = {
            k: v
            for k, v in body.items()
            if k not in ("model", "messages", "stream", "stream_options")
        }
        headers = request.headers
        delegation = headers.get("x-agent-sidecar-delegation", "")
        call = ModelCall(
            model=str(body.get("model") or ""),
            messages_json=json.dumps(body.get("messages")),
            parameters_json=json.dumps(parameters),
            task_id=headers.get("x-agent-sidecar-task-id", ""),
            intent=headers.get("x-agent-sidecar-intent", ""),
            approval_id=headers.get("x-agent-sidecar-approval-id", ""),
            no_wait=self.wait_s() is None,
            delegation_chain=tuple(t.strip() for t in delegation.split(",") if t.strip()),
            stream=bool(body.get("stream")),
        )
        if call.stream:
            return await self._stream(request, call)
        result = await self._calls.call_model(
            "ChatCompletions",
            call,
            context=call_context(request, self._user_header),
            time_remaining=self.wait_s(),
        )
        if result.status != grpc.StatusCode.OK:
            return _error(result)
        return _json(200, result.completion, decision_id=result.decision_id)

    async def _stream(self, request: web.BaseRequest, call: ModelCall) -> web.StreamResponse:
        """Chunks reach the agent as the provider sends them. The call is a task of its own:
        an agent that goes away does not cut it short (it completes and is audited)."""
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        task = asyncio.ensure_future(
            self._calls.call_model(
                "ChatCompletions",
                call,
                context=call_context(request, self._user_header),
                time_remaining=self.wait_s(),
                emit=lambda kind, value: events.put_nowait((kind, value)),
            )
        )
        task.add_done_callback(lambda _: events.put_nowait(("end", None)))
        response: web.StreamResponse | None = None
        writable = True
        while True:
            kind, value = await events.get()
            if kind == "start":
                response = web.StreamResponse(
                    status=200,
                    headers={
                        "Content-Type": "text/event-stream",
                        "x-agent-sidecar-decision-id": value.decision_id,
                        "Cache-Control": "no-cache",
                        "Server": "agent-sidecar",
                    },
                )
                response.force_close()
                writable = await _send(response.prepare(request))
            elif kind == "chunk" and response is not None and writable:
                writable = await _send(response.write(_event(value)))
            elif kind == "end":
                break
        result: CallResult = task.result()
        if response is None:
            return _error(result)
        if writable:
            if result.status == grpc.StatusCode.OK:
                await _send(response.write(b"data: [DONE]\n\n"))
            else:
                await _send(response.write(_event(error_body(result)[1])))
            await _send(response.write_eof())
        return response


async def _send(write: Awaitable[Any]) -> bool:
    """False once the agent has gone away (the call still completes and is audited)."""
    try:
        await write
    except (ConnectionError, RuntimeError):
        return False
    return True


def _event(value: Any) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def _json(
    status: int, body: Any, *, retry: bool = True, decision_id: str = "", close: bool = False
) -> web.Response:
    headers = {"Content-Type": "application/json", "Server": "agent-sidecar"}
    if decision_id:
        headers["x-agent-sidecar-decision-id"] = decision_id
    if not retry:
        headers["x-should-retry"] = "false"
    response = web.Response(
        status=status, body=json.dumps(body, separators=(",", ":")).encode(), headers=headers
    )
    if close:
        response.force_close()
    return response


def _error(result: CallResult) -> web.Response:
    status, body = error_body(result)
    return _json(status, body, retry=result.code in _RETRYABLE)


def _plain_error(status: int, code: str, message: str, close: bool = False) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    body["error"]["param"] = None
    return _json(status, body, retry=False, close=close)
