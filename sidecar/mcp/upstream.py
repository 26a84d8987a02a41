"""The sidecar as an MCP client of one upstream server: one long-lived connection per
upstream, shared by every call (never a new session per call). ``sidecar.mcp.http_upstream``
speaks Streamable HTTP (the newest revision the upstream offers); ``sidecar.mcp.stdio`` runs a
command (the handshake revision, :data:`UPSTREAM_VERSION`). The agent's own revision is the
endpoint's business, not the upstream's. This module holds what both share.

Everything an upstream sends is untrusted: messages are bounded in size, NaN and Infinity
refused, and a JSON-RPC error is kept whole (code, message, data) for the agent.
"""

from __future__ import annotations

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

__all__ = [
    "CLIENT_INFO",
    "UPSTREAM_VERSION",
    "Headers",
    "Notify",
    "Upstream",
    "events",
    "initialize_params",
    "loads_upstream",
    "read_answer",
    "read_limited",
    "sse_events",
]

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

    @property
    def secrets(self) -> tuple[str, ...]:
        """Secrets the sidecar handed this upstream for good (a stdio server's ``env_files``):
        scrubbed from everything it answers. Per-call credentials are the call's to scrub."""
        return ()

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


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
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


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_upstream(raw: bytes) -> Any:
    """An upstream's message as JSON (NaN and Infinity refused: they could not be relayed
    as JSON). Not the agents' strict reader: what is relayed is what was parsed here."""
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        message = f"the upstream's message is not JSON ({type(exc).__name__})"
        raise UpstreamMcpUnavailable(message, code="upstream_bad_response", reached=True) from None


async def events(response: aiohttp.ClientResponse, limit: int):  # type: ignore[no-untyped-def]
    """The JSON messages of a server-sent event stream, each bounded by ``limit``."""
    async for event in sse_events(response.content.iter_any(), limit):
        yield loads_upstream(event)


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
