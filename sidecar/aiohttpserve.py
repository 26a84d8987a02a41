"""An HTTP/1.1 server on the event loop for loopback listeners (aiohttp's low-level server).

What it adds to aiohttp: a cap on live connections (``max_connections``: a connection the
peer closed frees its slot at once; at the cap the oldest idle connection is shed for the new
one, and only when every connection is busy with a request is the new one closed at accept),
one timeout for a connection that is idle or still sending its headers (``idle_timeout_s``,
from accept and after each answer), a body read bounded in size and time, and an answer to a
request whose sender half-closes before its body is complete (400, not a silently dropped
connection). Framing is llhttp's, strict: two Content-Lengths, Content-Length with
Transfer-Encoding, and malformed lengths are 400 before any handler runs.
The socket is bound by the caller (:func:`bind_tcp`) so a port in use fails at build time;
``reuse_port`` lets ``server.workers`` processes share it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.identity.attest import CallContext

__all__ = ["BodyError", "HttpServer", "bind_tcp", "bind_unix", "call_context", "read_body"]

BACKLOG = 128

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# (status, stable code, message) -> the answer, in the server's own error shape
ErrorResponse = Callable[[int, str, str], web.StreamResponse]

log = logging.getLogger(__name__)


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket for ``host:port`` (not yet listening), TCP_NODELAY set."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A bound unix socket at ``path`` (a stale socket file is replaced), created under a
    umask that gives nobody else access, then set to ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    return sock


def call_context(request: web.BaseRequest, user_header: str = "x-user-token") -> CallContext:
    """What the pipeline needs from an HTTP request: the agent's credential, trace context,
    and the user token (each value of it: more than one is refused there)."""
    metadata: list[tuple[str, str]] = []
    auth = request.headers.get("Authorization")
    if auth:
        metadata.append(("authorization", auth))
    trace = request.headers.get("traceparent")
    if trace:
        metadata.append(("traceparent", trace))
    session = request.headers.get("Mcp-Session-Id")
    if session:  # telemetry's mcp.session.id (as a digest)
        metadata.append(("mcp-session-id", session))
    metadata += [(user_header, value) for value in request.headers.getall(user_header, [])]
    peer = f"ipv4:{request.remote}" if request.remote else "unix:"
    return CallContext(metadata=tuple(metadata), peer=peer)


@dataclass(frozen=True)
class BodyError(Exception):
    """A request body that cannot be read: ``status`` (400, 408, 413) and a stable code."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


async def read_body(request: web.BaseRequest, limit: int, timeout_s: float) -> bytes:
    """The whole body: at most ``limit`` bytes (413), within ``timeout_s`` (408), complete
    (400 when the sender stopped short)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, "request_too_large", f"the body exceeds {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, "request_too_large", f"the body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, "request_timeout", "the body did not arrive in time") from None
    except (HttpProcessingError, ConnectionError) as exc:
        raise BodyError(400, "incomplete_body", f"the body is incomplete ({exc})") from None
    return b"".join(chunks)


class _Protocol(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering after the peer half-closes (``SHUT_WR``) and
    closing at once a connection the peer closed between requests, and answering what it
    cannot parse in the server's own error shape, logged without the request's bytes (a
    malformed header line may hold a credential)."""

    error_response: ErrorResponse
    _last_payload: Any = None
    # loop time since which no request is in progress (accept, or the last answer)
    idle_since: float = 0.0
    _peer_done = False  # the peer sent EOF: no request follows the ones already read

    def is_idle(self) -> bool:
        """Waiting for a request, or for the rest of one's headers: no handler is running
        and none is queued (aiohttp's own test for its keep-alive timeout)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is dropped")
        if status >= 500:
            log.error("internal error answering a request", exc_info=exc)
            response = self.error_response(500, "internal_error", "internal error")
        else:
            reason = _first_line(exc) or "malformed request"
            log.info("malformed HTTP request refused", extra={"error": type(exc).__name__})
            response = self.error_response(status, "malformed_http", reason)
        response.force_close()
        return response

    def eof_received(self) -> bool:
        parser = self._parser
        if parser is not None:
            try:
                parser.feed_eof()
            except HttpProcessingError as exc:  # a body shorter than its framing said
                if self._last_payload is not None:
                    self._last_payload.set_exception(exc)
        self._peer_done = True
        if self.is_idle():  # nothing to answer: the slot is free now, not at the timeout
            self.force_close()
        elif not self._messages:  # answering the last request: close after its answer
            self.close()
        # (else: requests are queued; the last one's answer closes, in _handle_request)
        return True  # keep our side open: the answer can still be written

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # the payload the parser fills next (the newest message's)
            self._last_payload = self._messages[-1][1]

    async def start(self) -> None:
        if self._peer_done and not self._messages:  # EOF came before this task first ran
            self.force_close()
            return
        await super().start()

    async def _handle_request(
        self, request: web.BaseRequest, start_time: float | None, request_handler: Any
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self.idle_since = self._loop.time()
            if self._peer_done and not self._messages:
                self.close()


def _first_line(exc: BaseException | None) -> str:
    text = getattr(exc, "message", None) or (str(exc) if exc is not None else "")
    return str(text).strip().split("\n", 1)[0].strip()[:200]


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _CappedServer(web.Server):
    """Counts live connections (added at accept, removed when the transport closes, not when
    a handler that outlived its connection ends) and makes room at the cap by shedding the
    connection idle the longest: a slow or idle peer cannot starve a new one."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_connections: int,
        error_response: ErrorResponse,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._max_connections = max_connections
        self._error_response = error_response
        self._live: dict[_Protocol, None] = {}  # in accept order

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if len(self._live) >= self._max_connections and not self._shed_oldest_idle():
            log.warning("connection refused: every connection is busy with a request")
            return _Refused()
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.error_response = self._error_response
        # counted now, not at connection_made: a burst of accepts builds every protocol in
        # one loop pass, before any of them is connected
        self._live[protocol] = None
        return protocol

    def _shed_oldest_idle(self) -> bool:
        idle = [p for p in self._live if p.is_idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p.idle_since)
        self._live.pop(oldest, None)
        oldest.force_close()
        log.debug("idle connection shed for a new one", extra={"max": self._max_connections})
        return True

    def connection_made(
        self, handler: web_protocol.RequestHandler, transport: asyncio.Transport
    ) -> None:
        if isinstance(handler, _Protocol):
            handler.idle_since = self._loop.time()
        super().connection_made(handler, transport)

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        self._live.pop(handler, None)  # type: ignore[arg-type]
        super().connection_lost(handler, exc)


class HttpServer:
    """Serves ``handler`` on a bound socket, on the running loop."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        *,
        max_connections: int,
        idle_timeout_s: float,
        error_response: ErrorResponse,
        tls: ssl.SSLContext | None = None,
        cancel_on_disconnect: bool = False,
        max_field_size: int = 8190,
        max_headers: int = 128,
    ) -> None:
        self._max_field_size = max_field_size  # one header's bytes (a Txn-Token nests)
        self._max_headers = max_headers  # how many (each up to max_field_size)
        # True: a request's handler is cancelled when its client goes away (the A2A
        # endpoint: the peer's request ends with the agent's).
        self._cancel_on_disconnect = cancel_on_disconnect
        self._tls = tls  # TLS on this socket (the A2A inbound listener); None: plain HTTP
        self._sock = sock
        self._handler = handler
        self._error_response = error_response
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._web: _CappedServer | None = None
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    async def start(self) -> None:
        self._web = _CappedServer(
            self._handler,
            max_connections=self._max_connections,
            error_response=self._error_response,
            keepalive_timeout=self._idle_timeout_s,
            lingering_time=0.0,  # an unread body is not drained: the connection is closed
            access_log=None,
            max_line_size=8190,
            max_field_size=self._max_field_size,
            max_headers=self._max_headers,
            handler_cancellation=self._cancel_on_disconnect,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._web, sock=self._sock, backlog=BACKLOG, ssl=self._tls
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.close()
        if self._web is not None:
            self._web.pre_shutdown()  # idle keep-alive connections close now
            await self._web.shutdown(grace_s)  # answers in progress get grace_s
        if self._server is not None:
            await self._server.wait_closed()
        self._sock.close()

    def close(self) -> None:
        """Release the socket of a server that was never started."""
        if self._server is None:
            self._sock.close()
