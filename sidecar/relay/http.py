"""Relay of allowed tool calls to HTTP(S) upstreams.

The agent names a tool; configuration alone decides the URL: the target's ``base_url`` plus
the tool's path, whose ``{placeholders}`` are filled from arguments as single, percent-encoded
path segments. Redirects are never followed (a 3xx is returned as the upstream's answer), so
an upstream cannot send the call elsewhere. One pooled keep-alive session per target.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter

from sidecar import __version__
from sidecar.config import TargetSettings, ToolSettings
from sidecar.relay.errors import (
    RequestBuildError,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
    never_connected,
)

__all__ = ["HttpRelay", "UpstreamRequest", "UpstreamResponse", "build_request"]

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_ERROR_BODY_LIMIT = 4096


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


def read_bounded(
    response: requests.Response, limit: int, what: str, deadline: float | None = None
) -> bytes:
    """The whole body, or :class:`UpstreamResponseTooLarge` as soon as it passes ``limit``.

    ``deadline`` (``time.monotonic()``) bounds the whole read, not each ``recv``: before each
    chunk the socket's timeout is cut to what is left, so an upstream that drips a byte at a
    time is stopped at the deadline (:class:`UpstreamTimeout`) and its connection dropped."""
    if getattr(response, "_content_consumed", False):  # requests read it already (redirects)
        content = response.content or b""
        if len(content) > limit:
            raise UpstreamResponseTooLarge(f"{what} exceeds relay.max_response_bytes ({limit})")
        return content
    chunks, size = [], 0
    while True:
        _cut_read_timeout(response, deadline)
        try:  # read1: what one read brings, so the deadline is checked between drips
            chunk = response.raw.read1(65536, decode_content=True)
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError) as exc:
            raise UpstreamTimeout(f"{what} did not arrive in time", reached=True) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise UpstreamResponseTooLarge(f"{what} exceeds relay.max_response_bytes ({limit})")
        chunks.append(chunk)


def _cut_read_timeout(response: requests.Response, deadline: float | None) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        response.close()
        raise UpstreamTimeout("the upstream did not finish its answer in time", reached=True)
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(left)


class _TlsAdapter(HTTPAdapter):
    """An adapter whose connections use a given SSLContext (client certificate, roots)."""

    def __init__(self, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **kwargs)


class HttpRelay:
    """Sends upstream requests. Blocking: call it from a worker thread."""

    def __init__(
        self,
        targets: Mapping[str, TargetSettings],
        *,
        max_response_bytes: int,
        pool_size: int = 16,
    ) -> None:
        self._targets = targets
        self._max_response_bytes = max_response_bytes
        self._pool_size = pool_size
        self._sessions: dict[str, requests.Session] = {}
        for name in targets:
            session = requests.Session()
            session.trust_env = False  # no proxy or netrc credentials from the environment
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions[name] = session

    def use_tls(self, target: str, context: ssl.SSLContext) -> None:
        """Send ``target``'s calls with ``context`` from now on (e.g. a rotated client SVID).
        Connections of the previous context finish their calls and are then dropped."""
        adapter = _TlsAdapter(
            context, pool_connections=1, pool_maxsize=self._pool_size, max_retries=0
        )
        old = self._sessions[target].adapters.get("https://")
        self._sessions[target].mount("https://", adapter)
        if old is not None:
            old.close()

    def send(
        self,
        target_name: str,
        request: UpstreamRequest,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        target = self._targets[target_name]
        deadline = time.monotonic() + timeout_s  # the whole exchange, not each read
        all_headers = {"User-Agent": f"agent-sidecar/{__version__}", "Accept": "*/*"}
        all_headers.update(headers or {})
        body = None
        if request.json_body is not None:
            body = json.dumps(request.json_body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            response = self._sessions[target_name].request(
                request.method,
                request.url,
                params=request.params or None,
                data=body,
                headers=all_headers,
                timeout=timeout_s,
                allow_redirects=False,
                stream=True,
                verify=str(target.ca_file) if target.ca_file else True,
                # (for auth mtls the adapter's SSLContext verifies against the SPIFFE bundle)
            )
            with response:
                content = read_bounded(
                    response, self._max_response_bytes, "the upstream's answer", deadline
                )
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                f"the upstream did not answer within {timeout_s:.1f}s",
                reached=not never_connected(exc),
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise UpstreamUnavailable(
                "TLS handshake with the upstream failed", reached=False
            ) from exc
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:  # a read cut at the deadline (requests says
                raise UpstreamTimeout(  # ConnectionError for a streamed read timeout)
                    f"the upstream did not finish within {timeout_s:.1f}s", reached=True
                ) from exc
            raise UpstreamUnavailable(
                f"the upstream is unreachable ({type(exc).__name__})",
                reached=not never_connected(exc),
            ) from exc
        content_type = response.headers.get("Content-Type", "")
        if not 200 <= response.status_code < 300:
            raise UpstreamStatusError(
                response.status_code, content[:_ERROR_BODY_LIMIT], content_type
            )
        return UpstreamResponse(response.status_code, content_type, content)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
