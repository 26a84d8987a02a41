"""Relay of allowed model calls to providers, whatever the API (sidecar/model_apis/).

The sidecar builds the provider request itself: ``POST {base_url}{path}`` (the API's path)
with the provider's model name and the key from the provider's key file in the scheme of the
provider's format (:data:`AUTH_SCHEMES`: ``Authorization: Bearer`` for openai; ``x-api-key``
and ``anthropic-version`` for anthropic) plus its configured ``headers``. Nothing of the
agent's HTTP request (its own ``Authorization`` or ``x-api-key`` above all) is forwarded.
Streams are read as server-sent events on the event loop and handed over one by one as
:class:`SseEvent`; the API's stream handler says which event ends the stream (a stream that
breaks off before it is :class:`UpstreamStreamInterrupted`, raised by the caller).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sidecar import __version__
from sidecar.relay._client import SessionPool, default_tls, relay_error
from sidecar.relay.errors import (
    ProviderKeyUnavailable,
    RelayError,
    UpstreamBadResponse,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
    UpstreamStreamInterrupted,
)
from sidecar.relay.http import read_bounded
from sidecar.relay.settings import ProviderSettings

__all__ = ["AUTH_SCHEMES", "ModelRelay", "ProviderKey", "SseEvent"]

_ERROR_BODY_LIMIT = 4096


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event from the provider: its ``event:`` name ("" when none) and data."""

    event: str
    data: str


def _bearer(key: str | None, provider: ProviderSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


def _x_api_key(key: str | None, provider: ProviderSettings) -> dict[str, str]:
    return {"x-api-key": key} if key is not None else {}


# How a provider's key is sent, by ``ProviderSettings.auth_scheme``.
AUTH_SCHEMES: dict[str, Callable[[str | None, ProviderSettings], dict[str, str]]] = {
    "bearer": _bearer,
    "x-api-key": _x_api_key,
}


def _format_headers(provider: ProviderSettings) -> dict[str, str]:
    """Headers a provider format always needs (anthropic: its API version, and the beta
    features configured)."""
    if provider.type == "anthropic":
        headers = {"anthropic-version": provider.anthropic_version}
        if provider.anthropic_beta:
            headers["anthropic-beta"] = ",".join(provider.anthropic_beta)
        return headers
    return {}


class ProviderKey:
    """A provider's API key from its file (a mounted Secret), read again whenever the file
    changes (a rotated Secret), never shown: ``repr`` names the file only."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._key = ""

    def get(self) -> str | None:
        if self._path is None:
            return None
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ProviderKeyUnavailable(
                f"the provider key file {self._path} cannot be read ({exc.strerror})"
            ) from None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._seen:
                try:
                    self._key = self._path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise ProviderKeyUnavailable(
                        f"the provider key file {self._path} cannot be read ({type(exc).__name__})"
                    ) from None
                self._seen = stamp
            key = self._key
        if not key:
            raise ProviderKeyUnavailable(f"the provider key file {self._path} is empty")
        return key

    def __repr__(self) -> str:
        return f"ProviderKey({self._path})"


class ModelRelay:
    """Sends chat completions to providers on the event loop, one keep-alive pool each."""

    def __init__(
        self,
        providers: Mapping[str, ProviderSettings],
        *,
        max_response_bytes: int,
        pool_size: int = 16,
    ) -> None:
        self._providers = providers
        self._max = max_response_bytes
        self.keys = {name: ProviderKey(p.key_file) for name, p in providers.items()}
        self._pool = SessionPool(
            {name: default_tls(p.ca_file) for name, p in providers.items()}, pool_size=pool_size
        )

    def url(self, provider: str, path: str = "/chat/completions") -> str:
        return self._providers[provider].base_url.rstrip("/") + path

    def _headers(
        self, provider: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, str]:
        settings = self._providers[provider]
        all_headers = {
            "User-Agent": f"agent-sidecar/{__version__}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if body.get("stream") else "application/json",
            **settings.headers,
            **_format_headers(settings),
            **headers,
        }
        all_headers.update(AUTH_SCHEMES[settings.auth_scheme](self.keys[provider].get(), settings))
        return all_headers

    @asynccontextmanager
    async def _post(
        self,
        provider: str,
        path: str,
        body: dict[str, Any],
        timeout: aiohttp.ClientTimeout,
        headers: Mapping[str, str],
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The provider's 2xx response (errors raised as :class:`UpstreamStatusError`)."""
        all_headers = self._headers(provider, body, headers)
        async with (
            self._pool.session(provider) as session,
            session.post(
                self.url(provider, path),
                data=json.dumps(body, separators=(",", ":")).encode(),
                headers=all_headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response,
        ):
            if not 200 <= response.status < 300:
                body_bytes = await response.content.read(_ERROR_BODY_LIMIT)
                raise UpstreamStatusError(
                    response.status,
                    body_bytes,
                    response.headers.get("Content-Type", ""),
                    {
                        k: response.headers[k][:64]
                        for k in ("Retry-After", "retry-after-ms")
                        if k in response.headers
                    },
                )
            yield response

    async def complete(
        self,
        provider: str,
        body: dict[str, Any],
        *,
        timeout_s: float,
        headers: Mapping[str, str],
        path: str = "/chat/completions",
    ) -> dict[str, Any]:
        """One unary answer: the provider's JSON object (the API checks its shape).
        ``timeout_s`` bounds the whole exchange."""
        try:
            async with self._post(
                provider, path, body, aiohttp.ClientTimeout(total=timeout_s), headers
            ) as response:
                content = await read_bounded(response, self._max, "the provider's answer")
        except RelayError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise relay_error(exc, "the provider", timeout_s) from exc
        try:
            completion = json.loads(content)
        except ValueError as exc:
            raise UpstreamBadResponse("the provider's answer is not JSON") from exc
        if not isinstance(completion, dict):
            raise UpstreamBadResponse("the provider's answer is not a JSON object")
        return completion

    async def stream(
        self,
        provider: str,
        body: dict[str, Any],
        *,
        timeout_s: float,
        headers: Mapping[str, str],
        path: str = "/chat/completions",
    ) -> AsyncIterator[SseEvent]:
        """Each server-sent event of a streamed answer, until the provider closes (the caller
        stops at its API's final event). ``timeout_s`` bounds the connection and every stall
        between reads (the caller bounds the whole stream)."""
        timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        started = False
        try:
            async with self._post(provider, path, body, timeout, headers) as response:
                started = True
                async for event in _events(response, self._max):
                    yield event
        except RelayError:
            raise
        except TimeoutError as exc:
            if not started:
                raise relay_error(exc, "the provider", timeout_s) from exc
            raise UpstreamStreamInterrupted(
                f"the provider's stream stalled for {timeout_s:.1f}s"
            ) from exc
        except aiohttp.ClientError as exc:
            if not started:
                raise relay_error(exc, "the provider", timeout_s) from exc
            raise UpstreamStreamInterrupted(
                f"the provider's stream broke off ({type(exc).__name__})"
            ) from exc

    async def close(self) -> None:
        await self._pool.close()


async def _events(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[SseEvent]:
    """Each server-sent event (its name and data), at most ``limit`` bytes in all."""
    size, pending, data, name = 0, b"", [], ""
    async for block in response.content.iter_any():
        size += len(block)
        if size > limit:
            response.close()
            raise UpstreamResponseTooLarge(
                f"the provider's stream exceeds relay.max_response_bytes ({limit})"
            )
        *lines, pending = (pending + block).split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if line.startswith("data:"):
                data.append(line[5:].strip())
                continue
            if line.startswith("event:"):
                name = line[6:].strip()
                continue
            if line or not data:
                if not line:
                    name = ""  # an event without data is not dispatched
                continue  # a comment or id line; or nothing to dispatch
            payload, data = "\n".join(data), []
            yield SseEvent(name, payload)
            name = ""
    if pending.startswith(b"data:"):
        data.append(pending[5:].strip().decode("utf-8", errors="replace"))
    if data:
        yield SseEvent(name, "\n".join(data))
