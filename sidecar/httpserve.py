"""What every HTTP listener of the sidecar's (the front door, the webhook) does to requests it
does not trust, on the standard library's threaded server.

* :class:`CappedHTTPServer`: at most ``max_connections`` connections are served at once
  (one thread each); more are closed at accept. Handlers set ``timeout`` (a read timeout), so
  an idle or half-open connection, or a request that stops arriving, frees its thread.
* :func:`read_body`: the framing a body must have: exactly one ``Content-Length`` that is a
  byte count, no ``Transfer-Encoding`` (a request smuggled in a body is never run as the next
  one), at most ``limit`` bytes (413), all of it (a short body: 400; one that stops arriving:
  408). Every refusal closes the connection.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.errors import SidecarError

__all__ = ["CappedHTTPServer", "FramingError", "read_body"]

log = logging.getLogger(__name__)

# An oversized body is read and dropped up to this many bytes before the 413 goes out (so a
# client still writing can read the answer); the rest is cut off with the connection.
_DRAIN_LIMIT = 1024 * 1024
_DRAIN_PAUSE_S = 0.2  # a sender that pauses this long is waiting for the answer


class FramingError(SidecarError):
    """A request body that cannot be read as sent: answer ``status`` and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CappedHTTPServer(ThreadingHTTPServer):
    """A threaded server that serves at most ``max_connections`` connections at once."""

    daemon_threads = True
    max_connections = 64

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("connection refused: too many", extra={"client": str(client_address)})
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """The request body, exactly as framed; raises :class:`FramingError` (and marks the
    connection to close) for anything else."""
    lengths = handler.headers.get_all("Content-Length") or []
    if handler.headers.get("Transfer-Encoding"):
        handler.close_connection = True
        raise FramingError(400, "invalid_request", "Transfer-Encoding is not accepted")
    if len(lengths) > 1:
        handler.close_connection = True
        raise FramingError(400, "invalid_request", "Content-Length appears more than once")
    if not lengths or not lengths[0].strip().isdigit():
        handler.close_connection = True
        raise FramingError(411, "length_required", "Content-Length (a byte count) is required")
    length = int(lengths[0])
    if length > limit:
        handler.close_connection = True
        _drain(handler, length)
        raise FramingError(
            413, "request_too_large", f"the body is {length} bytes; the limit is {limit}"
        )
    try:
        body = handler.rfile.read(length)
    except TimeoutError as exc:
        handler.close_connection = True
        raise FramingError(408, "request_timeout", "the body did not arrive in time") from exc
    if len(body) != length:
        handler.close_connection = True
        raise FramingError(
            400, "invalid_request", f"the body ended after {len(body)} of {length} bytes"
        )
    return body


def _drain(handler: BaseHTTPRequestHandler, length: int) -> None:
    """Read what the client is still sending (up to a bound, and only while it keeps coming)
    so that it reads the refusal instead of a reset."""
    remaining = min(length, _DRAIN_LIMIT)
    try:
        handler.connection.settimeout(_DRAIN_PAUSE_S)
        while remaining > 0:
            chunk = handler.rfile.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)
    except OSError:  # a timeout or a reset: the answer goes out all the same
        return
