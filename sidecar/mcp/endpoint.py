"""The sidecar's MCP endpoint: Streamable HTTP on loopback or a unix socket, as the official
SDK's clients speak it, in both eras of the protocol:

- handshake (2024-11-05 .. 2025-11-25): ``initialize`` opens a session (``Mcp-Session-Id``);
  later requests carry it; ``GET`` opens the session's stream of list changes; ``DELETE``
  ends it.
- stateless (2026-07-28): every request carries its revision in ``params._meta`` and in the
  ``MCP-Protocol-Version`` header, with ``Mcp-Method`` (and ``Mcp-Name`` for a named method)
  repeating the body; a header that disagrees with the body is refused (HEADER_MISMATCH)
  before anything else. ``subscriptions/listen`` is the stream of list changes. A step-up
  may be answered ``input_required`` (sidecar/mcp/input_required.py): the one result that is
  not ``complete``, and only ever the sidecar's own.

Answers are JSON (``application/json``); streams are server-sent events. What the methods do
is sidecar/mcp/methods.py; this module is only the transport.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from mcp_types.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from sidecar.aiohttpserve import BodyError, HttpServer, bind_tcp, bind_unix, call_context, read_body
from sidecar.config import Settings
from sidecar.mcp import jsonrpc
from sidecar.mcp.calls import McpCalls
from sidecar.mcp.catalog import Catalog
from sidecar.mcp.errors import McpRequestError
from sidecar.mcp.methods import SERVER_INFO, Methods, Reply, refusal

__all__ = ["McpEndpoint"]

log = logging.getLogger(__name__)

_PROTOCOL_KEY = "io.modelcontextprotocol/protocolVersion"
_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
_SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"
_DECISION_KEY = "agent-sidecar.io/decision_id"
# Methods whose Mcp-Name header repeats a body parameter (2026-07-28).
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}
# Results the 2026-07-28 revision marks cacheable (they must say for whom and how long).
_CACHEABLE = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)
_KEEPALIVE_S = 15.0
_STREAM_BACKLOG = 256
_LIST_CHANGES = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}


@dataclass
class _Session:
    """A handshake-era session: its revision and its open streams."""

    version: str
    used: float = field(default_factory=time.monotonic)
    streams: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)


class McpEndpoint:
    def __init__(self, settings: Settings, calls: McpCalls, catalog: Catalog) -> None:
        self._settings = settings
        self._config = settings.mcp
        self._calls = calls  # the MCP adapter: refusals before decoding are audited too
        self._catalog = catalog
        self._methods = Methods(settings, calls, catalog)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # Stateless-era listen streams: queue -> the notifications it asked for.
        self._listens: dict[asyncio.Queue[dict[str, Any] | None], tuple[Any, set[str]]] = {}
        listen = self._config.listen
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix://").removeprefix("unix:"))
            sock = bind_unix(path, int(self._config.socket_mode, 8))
            self.address = f"unix://{path}"
        else:
            host, _, port = listen.rpartition(":")
            sock = bind_tcp(host.strip("[]"), int(port))
            self.address = f"http://{host}:{sock.getsockname()[1]}{self._config.path}"
        self._server = HttpServer(
            sock,
            self._handle,
            max_connections=self._config.max_connections,
            idle_timeout_s=self._config.read_timeout_s,
            error_response=_http_error,
        )
        self._unsubscribe = catalog.subscribe(self._changed)

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        await self._server.start()
        log.info("MCP endpoint listening", extra={"address": self.address})

    async def stop(self) -> None:
        self._unsubscribe()
        _end(self._listens)
        for session in self._sessions.values():
            _end(session.streams)
        await self._server.stop()

    def close(self) -> None:
        self._server.close()

    # --- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != self._config.path:
            return _http_error(404, "not_found", f"the MCP endpoint is {self._config.path}")
        if request.method == "POST":
            return await self._post(request)
        if request.method == "GET":
            return await self._get(request)
        if request.method == "DELETE":
            session = self._sessions.pop(request.headers.get("Mcp-Session-Id", ""), None)
            if session is None:
                return _http_error(404, "session_unknown", "no such session")
            _end(session.streams)  # the client is done: its stream ends too
            return web.Response(status=200)
        response = _http_error(405, "method_not_allowed", "POST, GET or DELETE")
        response.headers["Allow"] = "GET, POST, DELETE"
        return response

    async def _post(self, request: web.BaseRequest) -> web.StreamResponse:
        kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _http_error(415, "unsupported_media_type", "Content-Type: application/json")
        try:
            raw = await read_body(
                request, self._config.max_message_bytes, self._config.read_timeout_s
            )
        except BodyError as exc:
            result = await self._calls.reject("MCP message", exc.code, str(exc))
            return _rpc(exc.status, jsonrpc.error(None, INVALID_REQUEST, str(exc), _data(result)))
        try:
            message = jsonrpc.parse_message(raw)
        except McpRequestError as exc:
            result = await self._calls.reject("MCP message", "malformed_request", str(exc))
            status = exc.http_status if exc.http_status != 200 else 400
            return _rpc(status, jsonrpc.error(None, exc.rpc_code, str(exc), _data(result)))
        headers = request.headers
        if message.method == "initialize" and message.is_request:
            return self._initialize(message)
        session_id = headers.get("Mcp-Session-Id")
        modern = False
        if session_id is not None:
            session = self._sessions.get(session_id)
            if session is None:
                return _rpc(404, jsonrpc.error(message.id, INVALID_REQUEST, "session not found"))
            session.used = time.monotonic()
            self._sessions.move_to_end(session_id)
            version = headers.get("MCP-Protocol-Version", session.version)
            if version not in HANDSHAKE_PROTOCOL_VERSIONS:
                return _rpc(
                    400,
                    jsonrpc.error(
                        message.id, INVALID_REQUEST, f"unsupported MCP-Protocol-Version {version!r}"
                    ),
                )
        elif message.is_response:
            return web.Response(status=202)
        else:
            refused = _check_modern(message, headers)
            if refused is not None:
                return refused
            modern = True
        if not message.is_request:  # notifications (initialized, cancelled, ...): nothing to do
            return web.Response(status=202)
        context = call_context(request, self._settings.users.header)
        if modern and message.method == "server/discover":
            reply = Reply(result=Methods.discover(list(MODERN_PROTOCOL_VERSIONS)))
        elif modern and message.method == "subscriptions/listen":
            return await self._listen(request, message)
        else:
            reply = await self._methods.serve(
                message.method, message.params, context, modern=modern
            )
        body = reply.message(message.id)
        if reply.decision_id and "result" in body:  # the id that joins the audit record
            meta = body["result"].get("_meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            body["result"] = body["result"] | {"_meta": meta | {_DECISION_KEY: reply.decision_id}}
        if modern and "result" in body:
            # Never an upstream's own resultType: only the sidecar's step-up asks for input.
            kind = "input_required" if reply.input_required else "complete"
            body["result"] = body["result"] | {"resultType": kind}
            if message.method in _CACHEABLE:  # per caller and policy: never shared or kept
                body["result"] |= {"cacheScope": "private", "ttlMs": 0}
            body["result"].setdefault("_meta", {})[_SERVER_INFO_KEY] = SERVER_INFO
        status = _STATUS.get(body["error"]["code"], 200) if modern and "error" in body else 200
        return _rpc(status, body, decision_id=reply.decision_id)

    def _initialize(self, message: jsonrpc.Message) -> web.StreamResponse:
        version, answer = Methods.initialize(message.params)
        while len(self._sessions) >= self._config.max_sessions:
            _end(self._sessions.popitem(last=False)[1].streams)  # the least recently used goes
        now = time.monotonic()
        for sid, old in list(self._sessions.items()):
            if now - old.used > self._config.session_idle_s:
                _end(old.streams)
                del self._sessions[sid]
        session_id = secrets.token_hex(16)
        self._sessions[session_id] = _Session(version)
        response = _rpc(200, jsonrpc.result(message.id, answer))
        response.headers["Mcp-Session-Id"] = session_id
        return response

    async def _get(self, request: web.BaseRequest) -> web.StreamResponse:
        """A handshake session's stream: list changes reach the agent here."""
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return _http_error(406, "not_acceptable", "Accept: text/event-stream")
        session = self._sessions.get(request.headers.get("Mcp-Session-Id", ""))
        if session is None:
            return _http_error(
                404 if "Mcp-Session-Id" in request.headers else 400,
                "session_unknown",
                "a stream needs a session (initialize first)",
            )
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_STREAM_BACKLOG)
        session.streams.add(queue)
        try:
            return await self._stream(request, queue, first=None)
        finally:
            session.streams.discard(queue)

    async def _listen(
        self, request: web.BaseRequest, message: jsonrpc.Message
    ) -> web.StreamResponse:
        """subscriptions/listen (2026-07-28): acknowledged first, then the asked-for changes,
        each tagged with the listen request's id."""
        asked = message.params.get("notifications")
        if not isinstance(asked, dict):
            return _rpc(
                400,
                jsonrpc.error(message.id, INVALID_PARAMS, "params.notifications must be an object"),
            )
        honored = {k: True for k in _LIST_CHANGES.values() if asked.get(k) is True}
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_STREAM_BACKLOG)
        self._listens[queue] = (message.id, set(honored))
        first = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honored, "_meta": {_SUBSCRIPTION_KEY: message.id}},
        }
        try:
            return await self._stream(request, queue, first=first)
        finally:
            self._listens.pop(queue, None)

    async def _stream(
        self,
        request: web.BaseRequest,
        queue: asyncio.Queue[dict[str, Any] | None],
        *,
        first: dict[str, Any] | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if first is not None:
                await response.write(_event(first))
            while True:
                try:
                    async with asyncio.timeout(_KEEPALIVE_S):
                        item = await queue.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                await response.write(_event(item))
            await response.write_eof()
        return response

    def _changed(self, method: str) -> None:
        """An upstream's list changed: every open stream that wants it hears of it."""
        for session in self._sessions.values():
            for queue in session.streams:
                _offer(queue, {"jsonrpc": "2.0", "method": method})
        key = _LIST_CHANGES.get(method)
        for queue, (listen_id, wanted) in self._listens.items():
            if key in wanted:
                params = {"_meta": {_SUBSCRIPTION_KEY: listen_id}}
                _offer(queue, {"jsonrpc": "2.0", "method": method, "params": params})


def _check_modern(message: jsonrpc.Message, headers: Any) -> web.StreamResponse | None:
    """The stateless revision's rules, in order: the envelope in ``_meta``; the headers equal
    to the body; a revision the sidecar speaks. A request with neither a session nor the
    envelope is a handshake-era request without its session."""
    meta = message.params.get("_meta")
    version_header = headers.get("MCP-Protocol-Version")
    if not isinstance(meta, dict) or _PROTOCOL_KEY not in meta:
        if version_header in MODERN_PROTOCOL_VERSIONS:
            return _rpc(
                400,
                jsonrpc.error(
                    message.id,
                    INVALID_PARAMS,
                    f"params._meta needs {_PROTOCOL_KEY} and {_CAPABILITIES_KEY}",
                ),
            )
        return _rpc(
            400,
            jsonrpc.error(
                message.id, INVALID_REQUEST, "Mcp-Session-Id is required (initialize first)"
            ),
        )
    if _CAPABILITIES_KEY not in meta:
        return _rpc(
            400,
            jsonrpc.error(message.id, INVALID_PARAMS, f"params._meta needs {_CAPABILITIES_KEY}"),
        )
    for name in ("MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"):
        if len(headers.getall(name, [])) > 1:
            return _mismatch(message, f"{name} is sent more than once")
    if version_header is None or version_header != meta[_PROTOCOL_KEY]:
        return _mismatch(message, "MCP-Protocol-Version does not match params._meta")
    if headers.get("Mcp-Method") != message.method:
        return _mismatch(message, "Mcp-Method does not match the body's method")
    name_key = _NAMED.get(message.method)
    if name_key is not None and _header_value(headers.get("Mcp-Name")) != message.params.get(
        name_key
    ):
        return _mismatch(message, f"Mcp-Name does not match params.{name_key}")
    version = meta[_PROTOCOL_KEY]
    if version not in MODERN_PROTOCOL_VERSIONS:
        data = {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": version}
        return _rpc(
            400,
            jsonrpc.error(
                message.id, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version", data
            ),
        )
    return None


def _header_value(value: str | None) -> str | None:
    """A header value as the client meant it: ``=?base64?...?=`` carries what is not
    printable ASCII (the official SDK's encoding)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _mismatch(message: jsonrpc.Message, why: str) -> web.StreamResponse:
    return _rpc(400, jsonrpc.error(message.id, HEADER_MISMATCH, why, {"code": "header_mismatch"}))


def _end(queues: Any) -> None:
    """End these streams (their handlers finish the response)."""
    for queue in list(queues):
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        if queue.full():  # a stream nobody reads: make room for the end
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)


def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a stream nobody reads loses changes
        queue.put_nowait(item)


def _event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + jsonrpc.dumps(message) + b"\n\n"


def _data(result: Any) -> dict[str, Any]:
    return refusal(result)["data"]


def _rpc(status: int, body: dict[str, Any], *, decision_id: str = "") -> web.Response:
    headers = {"Content-Type": "application/json", "Server": "agent-sidecar"}
    if decision_id:
        headers["x-agent-sidecar-decision-id"] = decision_id
    return web.Response(status=status, body=jsonrpc.dumps(body), headers=headers)


def _http_error(status: int, code: str, message: str) -> web.Response:
    return _rpc(status, jsonrpc.error(None, INVALID_REQUEST, message, {"code": code}))
