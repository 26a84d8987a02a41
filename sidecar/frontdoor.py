"""The model front door: an HTTP listener on loopback, so that an agent built on the
unmodified ``openai`` SDK is governed by setting ``base_url`` (``OPENAI_BASE_URL``).

    POST /v1/chat/completions   unary, or ``stream: true`` as server-sent events
    POST /v1/responses          the Responses API, unary or streamed (``response.*`` events)
    POST /v1/embeddings         embeddings
    GET  /v1/models             only the aliases policy lets this caller use

Each POST route is one model API (sidecar/model_apis/: ``APIS``, found by ``route``); the API
supplies its request split, its error shape and its event framing.

Every request goes through the same attest -> decide -> relay -> record path as CallModel.
Identity: in ``pod`` mode the pod's SVID names the caller (the SDK's api key is ignored); in
``jwt`` mode the api key *is* the agent's JWT-SVID (``Authorization: Bearer``). The agent's
``Authorization`` header is never forwarded: the provider gets the sidecar's key.
Sidecar headers: ``x-agent-sidecar-task-id``, ``x-agent-sidecar-intent``,
``x-agent-sidecar-approval-id`` (retry after a step-up) and ``x-agent-sidecar-delegation``
(comma-separated JWT-SVIDs, outermost first).

Errors use the API's own shape (OpenAI's ``{"error": {"message", "type", "code", "param",
...}}`` for its APIs) plus ``decision_id``, ``reasons`` and, for a step-up, ``approval_id``
(and ``approval_url`` when the approvals console has one); a success carries the decision id
in the ``x-agent-sidecar-decision-id`` header:

    401 authentication_error   the caller could not be attested
    403 permission_error       policy denied (or could not decide)
    409 approval_required      a human must approve this exact request; retry with the id
    400 invalid_request_error  404 not_found_error (unknown model)
    429 rate_limit_error       a token budget or the step-up flood limit
    502/503/504                the provider answered too much or not the API's JSON, is
                               unreachable, or took too long
    the provider's status      ``upstream_error``: the provider's own error answer (its message,
                               scrubbed; ``Retry-After`` / ``retry-after-ms`` passed on)

409 rather than 202: the SDK treats any 2xx as a completion, and the request did *not*
happen. The sidecar's own refusals carry ``x-should-retry: false`` so the SDK does not repeat
them; a provider's error does not (the SDK retries 408/409/429/5xx as it would direct).
A stream holds at most :data:`STREAM_QUEUE_EVENTS` events for a slow agent; then the relay
waits (and stops reading the provider).
A stream that breaks after it started ends with the API's error event (the SDK raises
``APIError``) and never with the API's final event (``[DONE]``, ``response.completed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import grpc
from aiohttp import web

from sidecar.aiohttpserve import BodyError, HttpServer, bind_tcp, call_context, read_body
from sidecar.calls.common import CallResult
from sidecar.calls.models import ModelCalls
from sidecar.config import Settings
from sidecar.identity import CallContext
from sidecar.model_apis import APIS, ModelApi
from sidecar.model_apis.base import ApiError
from sidecar.model_apis.chat import CHAT
from sidecar.model_calls import ModelCall
from sidecar.policy import PolicyEngine
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["FrontDoor", "api_error", "error_body"]

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
# Events a stream may hold between the provider and a slow agent: once full, the relay waits
# for the agent (and stops reading the provider), so memory is bounded per stream.
STREAM_QUEUE_EVENTS = 64


def _upstream_error(body: bytes) -> tuple[str, dict[str, Any] | None]:
    """The provider's error message and its JSON body (already scrubbed of the key)."""
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return "", None
    if not isinstance(value, dict):
        return "", None
    error = value.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return (message[:2000] if isinstance(message, str) else ""), value


def api_error(result: CallResult) -> ApiError:
    """The HTTP status, error type, code and details of a call that did not complete. A
    provider's error keeps its status (429 and 5xx, 529 included, stay retryable for the SDK)
    and its message (scrubbed of the key)."""
    status, kind = _CODE_STATUS.get(result.code) or _STATUS.get(result.status, (500, "api_error"))
    upstream: dict[str, Any] | None = None
    message = result.message or result.code
    if result.upstream_status:
        status = result.upstream_status if 400 <= result.upstream_status < 600 else 502
        kind = "upstream_error"
        said, upstream = _upstream_error(result.upstream_body)
        if said:
            message = f"the provider answered HTTP {result.upstream_status}: {said}"
    details: dict[str, Any] = {
        "decision_id": result.decision_id,
        "reasons": list(result.decision.reasons) if result.decision else [],
    }
    if result.approval_id:
        details["approval_id"] = result.approval_id
        approval_url = getattr(result, "approval_url", "")
        if approval_url:
            details["approval_url"] = approval_url
    return ApiError(status, kind, result.code, message, details, upstream)


def error_body(result: CallResult, api: ModelApi = CHAT) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the API-shaped error for a call that did not complete."""
    error = api_error(result)
    return error.status, api.error_body(error)


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
        self.peak_queued = 0  # the most events one stream held for a slow agent (tests)

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
        if request.method == "POST":
            for api in APIS.values():
                if path == api.route:
                    return await self._api_call(request, api)
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

    async def _api_call(self, request: web.BaseRequest, api: ModelApi) -> web.StreamResponse:
        door = self._settings.frontdoor
        if request.content_length is None and "chunked" not in request.headers.get(
            "Transfer-Encoding", ""
        ):
            return _plain_error(
                411, "length_required", "a body with Content-Length is required", api=api
            )
        try:
            raw = await read_body(request, door.max_request_bytes, door.read_timeout_s)
        except BodyError as exc:
            return _plain_error(exc.status, exc.code, str(exc), close=True, api=api)
        try:
            body = loads_strict(raw or b"null", "the body")
        except StrictJsonError as exc:
            return _plain_error(400, "invalid_json", str(exc), api=api)
        if not isinstance(body, dict):
            return _plain_error(400, "invalid_json", "the body must be a JSON object", api=api)
        content_json, parameters_json, stream = api.front_door_call(body)
        headers = request.headers
        delegation = headers.get("x-agent-sidecar-delegation", "")
        call = ModelCall(
            model=str(body.get("model") or ""),
            messages_json=content_json,
            parameters_json=parameters_json,
            task_id=headers.get("x-agent-sidecar-task-id", ""),
            intent=headers.get("x-agent-sidecar-intent", ""),
            approval_id=headers.get("x-agent-sidecar-approval-id", ""),
            no_wait=self.wait_s() is None,
            delegation_chain=tuple(t.strip() for t in delegation.split(",") if t.strip()),
            stream=stream,
            api=getattr(api, "key", api.name),
        )
        if call.stream:
            return await self._stream(request, call, api)
        result = await self._calls.call_model(
            api.rpc,
            call,
            context=_agent_context(request, self._user_header),
            time_remaining=self.wait_s(),
        )
        if result.status != grpc.StatusCode.OK:
            return _error(result, api)
        return _json(200, result.completion, decision_id=result.decision_id)

    async def _stream(
        self, request: web.BaseRequest, call: ModelCall, api: ModelApi
    ) -> web.StreamResponse:
        """Events reach the agent as the provider sends them. The call is a task of its own:
        an agent that goes away does not cut it short (it completes and is audited)."""
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(STREAM_QUEUE_EVENTS)

        async def put(kind: str, value: Any) -> None:
            await events.put((kind, value))  # (waits while the agent is behind)
            self.peak_queued = max(self.peak_queued, events.qsize())

        task = asyncio.ensure_future(
            self._calls.call_model(
                api.rpc,
                call,
                context=_agent_context(request, self._user_header),
                time_remaining=self.wait_s(),
                emit=put,
            )
        )
        response: web.StreamResponse | None = None
        writable = True
        while True:
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if not getter.done() or getter.cancelled():
                if events.empty():
                    break  # the call ended and every event went out
                continue
            kind, value = getter.result()
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
                writable = await _send(response.write(api.sse(value)))
        result: CallResult = task.result()
        if response is None:
            return _error(result, api)
        if writable:
            if result.status == grpc.StatusCode.OK:
                end = api.stream_end()
                if end:
                    await _send(response.write(end))
            else:
                await _send(response.write(api.stream_error(api_error(result))))
            await _send(response.write_eof())
        return response


def _agent_context(request: web.BaseRequest, user_header: str) -> CallContext:
    """The call's context; without an ``Authorization`` header an ``x-api-key`` (the other
    scheme Anthropic clients use) is the agent's credential: in ``jwt`` mode its JWT-SVID.
    Neither is ever forwarded."""
    context = call_context(request, user_header)
    key = request.headers.get("x-api-key")
    if key and "Authorization" not in request.headers:
        bearer = ("authorization", f"Bearer {key}")
        context = replace(context, metadata=(bearer, *context.metadata))
    return context


async def _send(write: Awaitable[Any]) -> bool:
    """False once the agent has gone away (the call still completes and is audited)."""
    try:
        await write
    except (ConnectionError, RuntimeError):
        return False
    return True


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


def _error(result: CallResult, api: ModelApi = CHAT) -> web.Response:
    status, body = error_body(result, api)
    if result.upstream_status:
        # The provider's own answer: the SDK decides on its status as it would talking to
        # the provider (it retries 408/409/429/5xx), with the provider's retry hints.
        response = _json(status, body)
        for name, value in (result.upstream_headers or {}).items():
            response.headers[name] = value
        return response
    return _json(status, body, retry=result.code in _RETRYABLE)


def _plain_error(
    status: int, code: str, message: str, close: bool = False, api: ModelApi = CHAT
) -> web.Response:
    """A refusal before any call began (framing, JSON): in the route's API shape."""
    error = ApiError(status, "invalid_request_error", code, message)
    return _json(status, api.error_body(error), retry=False, close=close)
