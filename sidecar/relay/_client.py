"""Keep-alive HTTP client sessions on the event loop, one pool per upstream (aiohttp).

A session belongs to the loop it was first used on and is created there lazily. TLS contexts
may be swapped from any thread (a rotated client SVID): the next call on the loop builds a new
session with the new context; the old one is closed once its calls in flight have finished,
so a rotation never breaks a call.

Errors are translated here, once, into :mod:`sidecar.relay.errors` with ``reached`` saying
whether any byte of the request may have reached the upstream (what the audit record says
about a call that failed).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sidecar.relay.errors import RelayError, UpstreamTimeout, UpstreamUnavailable

__all__ = ["SessionPool", "relay_error"]

# Idle keep-alive connections are closed after this long (an upstream may drop them sooner;
# aiohttp then opens a new one).
KEEPALIVE_S = 30.0


@dataclass
class _Entry:
    session: aiohttp.ClientSession
    generation: int
    in_flight: int = 0
    retired: bool = False


@dataclass
class _Upstream:
    verify: ssl.SSLContext | bool
    generation: int = 0
    entry: _Entry | None = None
    retired: list[_Entry] = field(default_factory=list)


def default_tls(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Certificate verification for a target: its own roots, or the system's."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


class SessionPool:
    """One keep-alive session per upstream name, ``pool_size`` connections each."""

    def __init__(
        self,
        tls: Mapping[str, ssl.SSLContext | bool],
        *,
        pool_size: int,
        connectors: Mapping[str, Callable[..., aiohttp.TCPConnector]] | None = None,
    ) -> None:
        self._pool_size = pool_size
        # An upstream's own connector class (an A2A peer's checks its SPIFFE ID).
        self._connectors = dict(connectors or {})
        self._lock = threading.Lock()  # use_tls runs on identity threads
        self._upstreams = {name: _Upstream(verify) for name, verify in tls.items()}
        self._closed = False

    def use_tls(self, name: str, context: ssl.SSLContext) -> None:
        """Connect to ``name`` with ``context`` from the next call on."""
        with self._lock:
            upstream = self._upstreams[name]
            upstream.verify = context
            upstream.generation += 1

    @asynccontextmanager
    async def session(self, name: str) -> AsyncIterator[aiohttp.ClientSession]:
        """The current session of ``name`` for one call."""
        entry = self._current(name)
        entry.in_flight += 1
        try:
            yield entry.session
        finally:
            entry.in_flight -= 1
            if entry.retired and entry.in_flight == 0:
                await entry.session.close()

    def _current(self, name: str) -> _Entry:
        if self._closed:
            raise UpstreamUnavailable("the relay is shutting down", reached=False)
        with self._lock:
            upstream = self._upstreams[name]
            verify, generation = upstream.verify, upstream.generation
        entry = upstream.entry
        if entry is not None and entry.generation == generation:
            return entry
        upstream.retired = [e for e in upstream.retired if not e.session.closed]
        if entry is not None:  # a rotated context: finish the old session's calls, then close
            entry.retired = True
            if entry.in_flight == 0:
                asyncio.get_running_loop().create_task(entry.session.close())
            else:
                upstream.retired.append(entry)
        connector = self._connectors.get(name, aiohttp.TCPConnector)(
            limit=self._pool_size,
            limit_per_host=0,
            ssl=verify,
            keepalive_timeout=KEEPALIVE_S,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no proxy or netrc credentials from the environment
            # No cookies: one an upstream set for one call would go out on every later call
            # to it, whoever that call is for. Each call carries what the sidecar built.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("Content-Type",),
            raise_for_status=False,
        )
        upstream.entry = _Entry(session, generation)
        return upstream.entry

    async def close(self) -> None:
        self._closed = True
        for upstream in self._upstreams.values():
            for entry in [*upstream.retired, *([upstream.entry] if upstream.entry else [])]:
                if not entry.session.closed:
                    await entry.session.close()
            upstream.entry = None
            upstream.retired.clear()


def relay_error(exc: BaseException, what: str, timeout_s: float) -> RelayError:
    """The relay error for an aiohttp failure (or a timeout) talking to ``what``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        return UpstreamUnavailable(f"TLS handshake with {what} failed", reached=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"{what} did not accept a connection in time", reached=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"{what} is unreachable ({type(exc).__name__})", reached=False)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{what} did not finish within {timeout_s:.1f}s", reached=True)
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamUnavailable(f"TLS with {what} failed", reached=True)
    return UpstreamUnavailable(f"{what} is unreachable ({type(exc).__name__})", reached=True)
