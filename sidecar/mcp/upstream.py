"""The sidecar as an MCP client of one upstream server: one long-lived session per upstream,
shared by every call (never a new session per call), re-established when the upstream
forgets it. :class:`HttpUpstream` speaks Streamable HTTP; ``sidecar.mcp.stdio`` runs a
command. Both speak the handshake revision (:data:`UPSTREAM_VERSION`) the official SDK's
servers all serve; the agent's own revision is the endpoint's business, not the upstream's.

Everything an upstream sends is untrusted: messages are bounded in size, read strictly, and a
JSON-RPC error is kept whole (code, message, data) for the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from sidecar import __version__
from sidecar.mcp.errors import UpstreamMcpUnavailable, UpstreamRpcError
from sidecar.relay import HttpRelay, RelayError
from sidecar.relay._client import relay_error
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["UPSTREAM_VERSION", "HttpUpstream", "Notify", "Upstream", "read_answer"]

log = logging.getLogger(__name__)

UPSTREAM_VERSION = LATEST_HANDSHAKE_VERSION
CLIENT_INFO = {"name": "agent-sidecar", "version": __version__}
# (server name, method, params): a notification from an upstream.
Notify = Callable[[str, str, dict[str, Any]], None]
Headers = Callable[[], Awaitable[dict[str, str]]]


def initialize_params() -> dict[str, Any]:
    return {
        "protocolVersion": UPSTREAM_VERSION,
        "capabilities": {},
        "clientInfo": CLIENT_INFO,
    }


def read_answer(message: Any, request_id: int) -> dict[str, Any]:
    """The result of a JSON-RPC response, or its error raised as :class:`UpstreamRpcError`."""
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise UpstreamMcpUnavailable(
            "the upstream answered something other than the response",
            code="upstream_bad_response",
            reached=True,
        )
    if "error" in message:
        err = message["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            raise UpstreamMcpUnavailable(
                "the upstream's error is malformed", code="upstream_bad_response", reached=True
            )
        raise UpstreamRpcError(err["code"], str(err.get("message", "")), err.get("data"))
    value = message.get("result")
    if not isinstance(value, dict):
        raise UpstreamMcpUnavailable(
            "the upstream's result is not an object", code="upstream_bad_response", reached=True
        )
    return value


class Upstream(ABC):
    """One upstream MCP server, as the catalog and the calls use it."""

    def __init__(self, name: str, notify: Notify) -> None:
        self.name = name
        self._notify = notify
        self._ids = itertools.count(1)
        # What the upstream said it is (initialize's result), once connected.
        self.server_info: dict[str, Any] = {}

    @abstractmethod
    async def start(self) -> None:
        """Connect (or start the process); failures are retried on first use."""

    @abstractmethod
    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request on the shared session: its result, or :class:`UpstreamRpcError` /
        :class:`UpstreamMcpUnavailable`."""

    @abstractmethod
    async def close(self) -> None: ...


class HttpUpstream(Upstream):
    """Streamable HTTP, through the target's keep-alive pool and credential."""

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
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        with contextlib.suppress(UpstreamMcpUnavailable, UpstreamRpcError):
            await self._connect()

    async def _connect(self) -> None:
        """initialize + notifications/initialized, once for every caller that needs it."""
        async with self._lock:
            if self._connected:
                return
            self._session_id = None
            headers = await self._base_headers()
            rid = next(self._ids)
            message, session_id = await self._post(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "method": "initialize",
                    "params": initialize_params(),
                },
                headers,
                self._timeout_s,
                rid,
            )
            answer = read_answer(message, rid)
            self.server_info = answer
            self._session_id = session_id
            await self._post(
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers,
                self._timeout_s,
                None,
            )
            self._connected = True
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen())

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
            if params is not None:
                body["params"] = params
            sent = headers if headers is not None else await self._base_headers()
            try:
                message, _ = await self._post(body, sent, timeout_s, rid)
            except _SessionGone:
                # The upstream forgot the session (restarted, expired): nothing was done;
                # connect again and send once more.
                if self._session_id == session:
                    self._connected = False
                if attempt == 2:
                    raise UpstreamMcpUnavailable(
                        "the upstream keeps refusing the session", reached=False
                    ) from None
                continue
            return read_answer(message, rid)
        raise AssertionError("unreachable")

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": f"agent-sidecar/{__version__}",
        }
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if self._connected:
            headers["MCP-Protocol-Version"] = UPSTREAM_VERSION
        headers.update(extra)
        return headers

    async def _post(
        self,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout_s: float,
        request_id: int | None,
    ) -> tuple[Any, str | None]:
        """POST one message; a request's response (JSON, or the matching event of an SSE
        stream) and the session id the upstream gave."""
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with (
                self._relay.session(self._target) as session,
                session.post(
                    self._url,
                    data=data,
                    headers=self._headers(headers),
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    allow_redirects=False,
                ) as response,
            ):
                if response.status == 404 and self._session_id:
                    raise _SessionGone
                if request_id is None:
                    if response.status >= 400:
                        raise UpstreamMcpUnavailable(
                            f"the upstream refused a notification (HTTP {response.status})",
                            reached=True,
                        )
                    return None, None
                if response.status != 200:
                    raise UpstreamMcpUnavailable(
                        f"the upstream answered HTTP {response.status}",
                        code="upstream_error",
                        reached=True,
                    )
                session_id = response.headers.get("Mcp-Session-Id")
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if kind == "text/event-stream":
                    return await self._from_stream(response, request_id), session_id
                raw = await _read_limited(response, self._limit)
                return _loads(raw), session_id
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
        async for message in _events(response, self._limit):
            if (
                isinstance(message, dict)
                and message.get("id") == request_id
                and ("result" in message or "error" in message)
            ):
                return message
            self._dispatch(message)
        raise UpstreamMcpUnavailable("the upstream's stream ended without a response", reached=True)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, dict) and "id" not in message:
            method, params = message.get("method"), message.get("params") or {}
            if isinstance(method, str) and isinstance(params, dict):
                self._notify(self.name, method, params)

    async def _listen(self) -> None:
        """The upstream's own stream (GET): where list_changed arrives between requests.
        An upstream without one (405) is fine; a dropped stream is opened again."""
        delay = 0.2
        while not self._closed:
            try:
                async with (
                    self._relay.session(self._target) as session,
                    session.get(
                        self._url,
                        headers=self._headers(await self._base_headers())
                        | {"Accept": "text/event-stream"},
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s),
                        allow_redirects=False,
                    ) as response,
                ):
                    if response.status == 405:
                        return
                    if response.status == 404:
                        self._connected = False
                        return
                    if response.status != 200:
                        raise UpstreamMcpUnavailable(f"HTTP {response.status}", reached=True)
                    delay = 0.2
                    async for message in _events(response, self._limit):
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

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        session = self._session_id
        if session and self._connected:  # end the session politely; it may already be gone
            with contextlib.suppress(Exception):
                async with (
                    self._relay.session(self._target) as http,
                    http.delete(
                        self._url,
                        headers=self._headers(await self._base_headers()),
                        timeout=aiohttp.ClientTimeout(total=2),
                    ),
                ):
                    pass


class _SessionGone(Exception):
    """404 on a session: the upstream no longer knows it."""


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise UpstreamMcpUnavailable(
                f"the upstream's message exceeds {limit} bytes",
                code="upstream_response_too_large",
                reached=True,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _loads(raw: bytes) -> Any:
    try:
        return loads_strict(raw, "the upstream's message")
    except StrictJsonError as exc:
        raise UpstreamMcpUnavailable(str(exc), code="upstream_bad_response", reached=True) from None


async def _events(response: aiohttp.ClientResponse, limit: int):  # type: ignore[no-untyped-def]
    """The JSON messages of a server-sent event stream, each bounded by ``limit``."""
    async for event in sse_events(response.content.iter_any(), limit):
        yield _loads(event)


async def sse_events(chunks: Any, limit: int):  # type: ignore[no-untyped-def]
    """The data of each event in a stream of byte chunks (lines joined by newlines); an event
    (or a line) over ``limit`` bytes ends the stream with upstream_response_too_large."""
    buffer = b""
    data: list[bytes] = []
    size = 0
    async for chunk in chunks:
        buffer += chunk
        while True:
            line, sep, rest = buffer.partition(b"\n")
            if not sep:
                break
            buffer = rest
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield b"\n".join(data)
                data, size = [], 0
            elif line.startswith(b"data:"):
                part = line[5:].removeprefix(b" ")
                size += len(part)
                data.append(part)
            if size > limit:
                break
        if size > limit or len(buffer) > limit:
            raise UpstreamMcpUnavailable(
                f"an event exceeds {limit} bytes", code="upstream_response_too_large", reached=True
            )
