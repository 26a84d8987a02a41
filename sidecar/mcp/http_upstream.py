"""An upstream MCP server over Streamable HTTP, through the target's keep-alive pool and
credential, in the newest revision it speaks:

- stateless (2026-07-28) when ``server/discover`` says so: every request carries the
  envelope in ``_meta`` and the routing headers; no session; list changes arrive on a
  ``subscriptions/listen`` stream. The cheaper revision for both sides.
- handshake (2025-11-25) otherwise: one session (``initialize``) shared by every call and
  joined again when the upstream forgets it (404); list changes arrive on its GET stream.

What the agent sees does not depend on it: results are stripped of the stateless
revision's bookkeeping (the endpoint adds its own for stateless agents).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

import aiohttp
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from sidecar import __version__
from sidecar.mcp.errors import UpstreamMcpUnavailable, UpstreamRpcError
from sidecar.mcp.upstream import (
    CLIENT_INFO,
    UPSTREAM_VERSION,
    Headers,
    Notify,
    Upstream,
    events,
    initialize_params,
    loads_upstream,
    read_answer,
    read_limited,
)
from sidecar.relay import HttpRelay, RelayError
from sidecar.relay._client import relay_error
from sidecar.relay.scrub import Scrubber

__all__ = ["HttpUpstream"]

log = logging.getLogger(__name__)

MODERN = MODERN_PROTOCOL_VERSIONS[-1]
_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
}
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_MODERN_ONLY = ("resultType", "cacheScope", "ttlMs")
_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
_LISTEN = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}


class _SessionGone(Exception):
    """404 on a session: the upstream no longer knows it."""


class HttpUpstream(Upstream):
    def __init__(
        self,
        name: str,
        notify: Notify,
        *,
        relay: HttpRelay,
        target: str,
        url: str,
        base_headers: Headers,
        max_message_bytes: int,
        timeout_s: float,
        revision: str = "auto",
    ) -> None:
        super().__init__(name, notify)
        self._relay = relay
        self._target = target
        self._url = url
        self._base_headers = base_headers
        self._limit = max_message_bytes
        self._timeout_s = timeout_s
        self._session_id: str | None = None
        self._connected = False
        # The revision in use: None until the upstream was asked (auto).
        self.modern: bool | None = {"auto": None, "handshake": False, "stateless": True}[revision]
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        with contextlib.suppress(UpstreamMcpUnavailable, UpstreamRpcError):
            await self._connect()

    async def _connect(self) -> None:
        """Learn the revision (and, for the handshake, open the session), once for every
        caller that needs it."""
        if self._connected:
            return
        async with self._lock:
            if self._connected:
                return
            headers = await self._base_headers()
            if self.modern is None:
                self.modern = await self._discover(headers)
            if not self.modern:
                await self._initialize(headers)
            self._connected = True
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen())

    async def _discover(self, headers: dict[str, str]) -> bool:
        """Whether the upstream speaks the stateless revision (``server/discover``)."""
        rid = next(self._ids)
        body = {"jsonrpc": "2.0", "id": rid, "method": "server/discover"}
        body["params"] = {"_meta": _ENVELOPE}
        try:
            message, _ = await self._post(body, headers | _routing("server/discover", {}), rid)
            answer = read_answer(message, rid)
        except (UpstreamRpcError, UpstreamMcpUnavailable) as exc:
            if isinstance(exc, UpstreamMcpUnavailable) and not exc.code == "upstream_error":
                raise  # unreachable: not an answer about revisions
            return False
        versions = answer.get("supportedVersions")
        if not isinstance(versions, list) or MODERN not in versions:
            return False
        meta = answer.get("_meta")
        self.server_info = meta.get(_SERVER_INFO, {}) if isinstance(meta, dict) else {}
        return True

    async def _initialize(self, headers: dict[str, str]) -> None:
        self._session_id = None
        rid = next(self._ids)
        body = {"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": initialize_params()}
        message, session_id = await self._post(body, headers, rid)
        self.server_info = read_answer(message, rid)
        self._session_id = session_id
        notice = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self._post(notice, headers | self._session_headers(), None)

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            await self._connect()
            session = self._session_id
            rid = next(self._ids)
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
            own = await self._base_headers() if headers is None else {}
            sent = dict(headers) if headers is not None else dict(own)
            if self.modern:
                body["params"] = (params or {}) | {"_meta": _ENVELOPE}
                sent |= _routing(method, params or {})
            else:
                if params is not None:
                    body["params"] = params
                sent |= self._session_headers()
            try:
                message, _ = await self._post(body, sent, rid, timeout_s=timeout_s)
            except _SessionGone:
                # The upstream forgot the session (restarted, expired): nothing was done;
                # open a new one and send once more.
                if self._session_id == session:
                    self._connected = False
                if attempt == 2:
                    raise UpstreamMcpUnavailable(
                        "the upstream keeps refusing the session", reached=False
                    ) from None
                continue
            answer = _plain(read_answer(message, rid))
            # A request of the sidecar's own (a list): the credential it sent never reaches
            # an agent through what the upstream answers. (Calls scrub their own.)
            return _scrubbed(answer, own) if own else answer
        raise AssertionError("unreachable")

    def _session_headers(self) -> dict[str, str]:
        if self._session_id is None:
            return {"MCP-Protocol-Version": UPSTREAM_VERSION}
        return {"Mcp-Session-Id": self._session_id, "MCP-Protocol-Version": UPSTREAM_VERSION}

    async def _post(
        self,
        body: dict[str, Any],
        headers: dict[str, str],
        request_id: int | None,
        *,
        timeout_s: float | None = None,
    ) -> tuple[Any, str | None]:
        """POST one message; a request's response (JSON, or the matching event of an SSE
        stream, read to its end so the connection is kept) and the session id given."""
        timeout_s = timeout_s or self._timeout_s
        data = json.dumps(body, separators=(",", ":")).encode()
        sent = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": f"agent-sidecar/{__version__}",
        } | headers
        try:
            async with (
                self._relay.session(self._target) as session,
                session.post(
                    self._url,
                    data=data,
                    headers=sent,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    allow_redirects=False,
                ) as response,
            ):
                if response.status == 404 and "Mcp-Session-Id" in sent:
                    raise _SessionGone
                if request_id is None:
                    if response.status >= 400:
                        raise UpstreamMcpUnavailable(
                            f"the upstream refused a notification (HTTP {response.status})",
                            reached=True,
                        )
                    return None, None
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if response.status != 200 and kind != "application/json":
                    raise UpstreamMcpUnavailable(
                        f"the upstream answered HTTP {response.status}",
                        code="upstream_error",
                        reached=True,
                    )
                session_id = response.headers.get("Mcp-Session-Id")
                if kind == "text/event-stream":
                    return await self._from_stream(response, request_id), session_id
                # JSON, also at 4xx (a JSON-RPC error the stateless revision sends so)
                return loads_upstream(await read_limited(response, self._limit)), session_id
        except (UpstreamMcpUnavailable, _SessionGone):
            raise
        except RelayError as exc:
            raise UpstreamMcpUnavailable(str(exc), code=exc.code, reached=exc.reached) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            err = relay_error(exc, f"MCP server {self.name!r}", timeout_s)
            raise UpstreamMcpUnavailable(str(err), code=err.code, reached=err.reached) from None

    async def _from_stream(self, response: aiohttp.ClientResponse, request_id: int) -> Any:
        """The response to ``request_id`` from an SSE stream; notifications on the way are
        passed on, anything else dropped (the sidecar asks nothing of the agent for an
        upstream: sampling and elicitation are not relayed)."""
        answer = None
        async for message in events(response, self._limit):
            if (
                answer is None
                and isinstance(message, dict)
                and message.get("id") == request_id
                and ("result" in message or "error" in message)
            ):
                answer = message
                continue
            self._dispatch(message)
        if answer is None:
            raise UpstreamMcpUnavailable(
                "the upstream's stream ended without a response", reached=True
            )
        return answer

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, dict) and "id" not in message:
            method, params = message.get("method"), message.get("params") or {}
            if isinstance(method, str) and isinstance(params, dict):
                self._notify(self.name, method, params)

    async def _listen(self) -> None:
        """The upstream's stream of list changes (GET for a session, subscriptions/listen
        when stateless). An upstream without one is fine; a dropped one is opened again."""
        delay = 0.2
        while not self._closed:
            try:
                async with self._relay.session(self._target) as session:
                    response = await self._open_stream(session)
                    async with response:
                        if response.status in (404, 405) or (
                            response.status == 400 and self.modern
                        ):
                            log.info(
                                "MCP upstream offers no stream of list changes",
                                extra={"server": self.name, "status": response.status},
                            )
                            if response.status == 404 and not self.modern:
                                self._connected = False
                            return
                        if response.status != 200:
                            raise UpstreamMcpUnavailable(f"HTTP {response.status}", reached=True)
                        delay = 0.2
                        async for message in events(response, self._limit):
                            self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info(
                    "MCP upstream notification stream dropped",
                    extra={"server": self.name, "error": type(exc).__name__},
                )
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _open_stream(self, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        headers = await self._base_headers()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s)
        if not self.modern:
            return await session.get(
                self._url,
                headers=headers | self._session_headers() | {"Accept": "text/event-stream"},
                timeout=timeout,
                allow_redirects=False,
            )
        body = {
            "jsonrpc": "2.0",
            "id": f"listen-{next(self._ids)}",
            "method": "subscriptions/listen",
            "params": {"notifications": _LISTEN, "_meta": _ENVELOPE},
        }
        return await session.post(
            self._url,
            json=body,
            headers=headers
            | _routing("subscriptions/listen", {})
            | {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"},
            timeout=timeout,
            allow_redirects=False,
        )

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._session_id and self._connected:  # end the session politely; it may be gone
            with contextlib.suppress(Exception):
                async with (
                    self._relay.session(self._target) as http,
                    http.delete(
                        self._url,
                        headers=await self._base_headers() | self._session_headers(),
                        timeout=aiohttp.ClientTimeout(total=2),
                    ),
                ):
                    pass


def _routing(method: str, params: dict[str, Any]) -> dict[str, str]:
    """The stateless revision's routing headers, repeating the body."""
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    key = _NAMED.get(method)
    if key is not None and isinstance(params.get(key), str):
        value = params[key]
        if value.isascii() and value.isprintable():
            headers["Mcp-Name"] = value
        else:
            headers["Mcp-Name"] = "=?base64?" + base64.b64encode(value.encode()).decode() + "?="
    return headers


def _scrubbed(answer: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    scrubber = Scrubber()
    for value in headers.values():
        scrubber.add(value.removeprefix("Bearer "))
    return scrubber.value(answer)


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    """A stateless result without that revision's bookkeeping; a result that is not complete
    (the upstream asks the client for input) is not relayed."""
    kind = result.get("resultType", "complete")
    if kind != "complete":
        raise UpstreamMcpUnavailable(
            # not quoted: the upstream's text (it could be the credential it was sent)
            "the upstream's result is not complete; the gateway relays complete results only",
            code="upstream_bad_response",
            reached=True,
        )
    out = {k: v for k, v in result.items() if k not in _MODERN_ONLY}
    meta = out.get("_meta")
    if isinstance(meta, dict) and _SERVER_INFO in meta:
        rest = {k: v for k, v in meta.items() if k != _SERVER_INFO}
        if rest:
            out["_meta"] = rest
        else:
            del out["_meta"]
    return out
