"""Relay of allowed tool calls to HTTP(S) upstreams.

The agent names a tool; configuration alone decides the URL: the target's ``base_url`` plus
the tool's path, whose ``{placeholders}`` are filled from arguments as single, percent-encoded
path segments. Redirects are never followed (a 3xx is returned as the upstream's answer), so
an upstream cannot send the call elsewhere. One keep-alive pool per target, on the event
loop (aiohttp: see docs/dependencies.md for why).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from sidecar import __version__
from sidecar.relay._client import SessionPool, default_tls, relay_error
from sidecar.relay.errors import (
    RelayError,
    RequestBuildError,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
)
from sidecar.relay.settings import TargetSettings, ToolSettings

__all__ = ["HttpRelay", "UpstreamRequest", "UpstreamResponse", "build_request"]

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_ERROR_BODY_LIMIT = 4096
_USER_AGENT = f"agent-sidecar/{__version__}"


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json_body: Any = None


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    content_type: str
    body: bytes


def build_request(target: TargetSettings, tool: ToolSettings, arguments: Mapping[str, Any]):
    """The request a call becomes. Pure; raises :class:`RequestBuildError` on bad arguments."""
    remaining = dict(arguments)
    path = tool.path
    for name in tool.path_params:
        if name not in remaining:
            raise RequestBuildError(f"argument {name!r} is required by the tool's path")
        value = remaining.pop(name)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RequestBuildError(f"argument {name!r} must be a string or integer")
        text = str(value)
        if text in ("", ".", ".."):
            raise RequestBuildError(f"argument {name!r} is not a usable path segment")
        path = path.replace("{" + name + "}", quote(text, safe=""))
    url = target.base_url.rstrip("/") + path
    if tool.method in _BODY_METHODS:
        return UpstreamRequest(tool.method, url, json_body=remaining)
    params: list[tuple[str, str]] = []
    for key, value in remaining.items():
        for item in value if isinstance(value, list) else [value]:
            params.append((key, _query_value(key, item)))
    return UpstreamRequest(tool.method, url, params=params)


def _query_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RequestBuildError(f"argument {key!r} cannot be sent as a query parameter")


async def read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole (decoded) body, or :class:`UpstreamResponseTooLarge` as soon as it passes
    ``limit``; the connection is then dropped, not drained."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            response.close()
            raise UpstreamResponseTooLarge(f"{what} exceeds relay.max_response_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


class HttpRelay:
    """Sends upstream requests on the event loop, one keep-alive pool per target."""

    def __init__(
        self,
        targets: Mapping[str, TargetSettings],
        *,
        max_response_bytes: int,
        pool_size: int = 16,
        connectors: Mapping[str, Callable[..., aiohttp.TCPConnector]] | None = None,
    ) -> None:
        self._targets = targets
        self._max_response_bytes = max_response_bytes
        self._pool = SessionPool(
            {name: default_tls(t.ca_file) for name, t in targets.items()},
            pool_size=pool_size,
            connectors=connectors,
        )

    def use_tls(self, target: str, context: ssl.SSLContext) -> None:
        """Send ``target``'s calls with ``context`` from now on (e.g. a rotated client SVID);
        safe from any thread. Calls in flight finish on the previous context."""
        self._pool.use_tls(target, context)

    def session(self, target: str) -> AbstractAsyncContextManager[aiohttp.ClientSession]:
        """``target``'s keep-alive session for one exchange of a protocol of its own (MCP's
        Streamable HTTP); TLS and rotation as for :meth:`send`."""
        return self._pool.session(target)

    async def send(
        self,
        target_name: str,
        request: UpstreamRequest,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """One exchange; ``timeout_s`` bounds all of it (connect, send, every read)."""
        all_headers = {"User-Agent": _USER_AGENT, "Accept": "*/*"}
        all_headers.update(headers or {})
        body = None
        if request.json_body is not None:
            body = json.dumps(request.json_body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        url = request.url
        if request.params:
            url += "?" + urlencode(request.params)
        try:
            async with (
                self._pool.session(target_name) as session,
                session.request(
                    request.method,
                    URL(url, encoded=True),
                    data=body,
                    headers=all_headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    allow_redirects=False,
                ) as response,
            ):
                content = await read_bounded(
                    response, self._max_response_bytes, "the upstream's answer"
                )
                status = response.status
                content_type = response.headers.get("Content-Type", "")
        except RelayError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise relay_error(exc, "the upstream", timeout_s) from exc
        if not 200 <= status < 300:
            raise UpstreamStatusError(status, content[:_ERROR_BODY_LIMIT], content_type)
        return UpstreamResponse(status, content_type, content)

    async def close(self) -> None:
        await self._pool.close()
