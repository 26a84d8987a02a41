"""The bundle poller: download the bundle the way OPA does, and hand new ones to activation.

OPA's protocol: ``GET <service url>/<resource>`` with ``If-None-Match: <etag>`` after the first
download; ``304 Not Modified`` means the active revision is current. With
``long_polling_timeout_seconds`` the request says ``Prefer: modes=long-poll;wait=N``; a server
that answers ``Content-Type: application/vnd.openpolicyagent.bundles`` holds it until a new
bundle exists (or N seconds), and the next request goes out at once, unless the answer came back
unchanged well before the wait (a proxy that drops ``Prefer``): then normal polling, never a busy
loop. Otherwise the poller waits a random delay in ``[min_delay_seconds, max_delay_seconds]``.
After failures it backs off exponentially: while no revision is active from OPA's 100 ms base
(the sidecar denies every call until the first one), else from the minimum; never past the
maximum. Each round has one deadline (header timeout + long-poll wait + a body budget at a
minimum rate, for the announced ``Content-Length`` or else ``size_limit_bytes``), enforced by
a timer that cuts the connection, so a slow-drip server cannot hold the poller. The body is
read up to ``size_limit_bytes`` and no further. Credentials: a bearer token (a file is re-read
on each request), a client certificate, or the sidecar's SVID; none of them is ever logged or
reported, and an unexpected error is reported by its type only.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.policy.bundle.activate import BundleActivator, BundleRejected
from sidecar.policy.bundle.settings import BundleSettings, header_safe
from sidecar.policy.bundle.status import BundleStatusTracker

__all__ = ["LONG_POLL_CONTENT_TYPE", "BundlePoller", "DownloadError"]

log = logging.getLogger(__name__)

LONG_POLL_CONTENT_TYPE = "application/vnd.openpolicyagent.bundles"
_CHUNK = 64 * 1024
_RETRY_BASE = 0.1  # OPA's minRetryDelay: the first retry while nothing is active
_BACKOFF_FACTOR = 1.6  # OPA's util.DefaultBackoff
_BODY_RATE = 256 * 1024  # bytes/s a download must keep up, on average, within its deadline
_TOO_SOON = 0.5  # a long poll answered unchanged within this share of its wait was not held
_LATE = "the download did not finish within its deadline"


class DownloadError(Exception):
    """The download failed; the message is safe to report (no credentials)."""


@dataclass(frozen=True)
class _Response:
    status: int
    etag: str
    body: bytes
    long_poll: bool
    elapsed: float = 0.0


class BundlePoller:
    """Polls one bundle on a thread; :meth:`poll_once` is one request (tests call it)."""

    def __init__(
        self,
        settings: BundleSettings,
        activator: BundleActivator,
        tracker: BundleStatusTracker,
        *,
        svid_context: Callable[[], ssl.SSLContext] | None = None,
        etag: str = "",
    ) -> None:
        self._settings = settings
        self._activator = activator
        self._tracker = tracker
        self._svid_context = svid_context
        self.etag = etag
        self.long_poll = False
        self._failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-bundle", daemon=True)

    def start(self) -> BundlePoller:
        self._thread.start()
        return self

    def request(self) -> None:
        """Poll now (SIGHUP)."""
        self._wake.set()

    def stop(self, *, wait: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        if wait and self._thread.is_alive():
            self._thread.join()

    def poll_once(self) -> bool:
        """Download once; True when a new revision was activated."""
        name = self._settings.name
        self._tracker.request(name)
        try:
            response = self._get()
        except DownloadError as exc:
            self._failures += 1
            self.long_poll = False
            self._tracker.on_download(name, False, str(exc))
            self._tracker.on_error(name, "bundle_download_failed", str(exc))
            log.warning("policy bundle download failed", extra={"bundle": name, "error": str(exc)})
            return False
        self._failures = 0
        wait = self._settings.source.polling.long_polling_timeout_seconds
        unchanged = response.status == 304 or (bool(self.etag) and response.etag == self.etag)
        # A long poll answered unchanged long before its wait was not held: poll normally.
        self.long_poll = response.long_poll and not (
            unchanged and response.elapsed < wait * _TOO_SOON
        )
        if unchanged:  # OPA: a 304 clears the error; no new download
            self._tracker.on_unchanged(name)
            return False
        self._tracker.on_download(name, True)
        try:
            self._activator.activate(response.body, response.etag)
        except BundleRejected:
            self._failures += 1  # reported by the activator; back off as after a failure
            self.long_poll = False
            return False
        self.etag = response.etag
        return True

    def next_delay(self) -> float:
        """Seconds until the next request (0: long polling, straight back)."""
        polling = self._settings.source.polling
        if self._failures == 0 and self.long_poll:
            return 0.0
        low, high = polling.min_delay_seconds, polling.max_delay_seconds
        if self._failures and not self._activator.engine.revision:
            # OPA's DefaultBackoff: 100 ms * 1.6^retries, capped, +-10% jitter.
            delay = min(float(high), _RETRY_BASE * _BACKOFF_FACTOR ** min(self._failures - 1, 64))
            return delay * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not a secret
        if self._failures:
            high = min(high, low * 2 ** min(self._failures - 1, 16))
        return random.uniform(low, max(low, high))  # noqa: S311 - jitter, not a secret

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the poller must outlive any bug in one round
                # By type only: the exception may carry request headers (credentials).
                kind = type(exc).__name__
                self._tracker.on_error(self._settings.name, "bundle_download_failed", kind)
                log.error("policy bundle poll failed", extra={"error_type": kind})
                self._failures += 1
            self._wake.wait(self.next_delay())
            self._wake.clear()

    def _get(self) -> _Response:
        settings = self._settings
        service = settings.service
        wait = settings.source.polling.long_polling_timeout_seconds
        parts = urlsplit(settings.url)
        timeout = service.response_header_timeout_seconds + wait
        budget = max(
            service.response_header_timeout_seconds, settings.source.size_limit_bytes / _BODY_RATE
        )
        started = time.monotonic()
        deadline = started + timeout + budget
        try:
            if parts.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    parts.hostname or "", parts.port, timeout=timeout, context=self._tls()
                )
            else:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise DownloadError(f"cannot set up the connection: {type(exc).__name__}") from None
        headers = dict(service.headers)
        headers.update(self._authorization())
        if self.etag:
            headers["If-None-Match"] = self.etag
        if wait:
            headers["Prefer"] = f"modes=long-poll;wait={wait}"
        path = parts.path or "/"
        watchdog: threading.Timer | None = None
        try:
            conn.request("GET", path, headers=headers)
            sock = conn.sock  # the reply reads it even after a closing answer drops conn.sock
            watchdog = _watch(sock, deadline)  # headers and body, however slowly they drip
            reply = conn.getresponse()
            status = reply.status
            elapsed = time.monotonic() - started
            if status == 304:
                return _Response(304, self.etag, b"", self._long_poll(reply, wait), elapsed)
            if status != 200:
                raise DownloadError(f"the bundle server answered HTTP {status} {reply.reason}")
            length = reply.getheader("Content-Length") or ""
            if length.isdigit():  # a known size: the body budget is for that size
                sized = max(service.response_header_timeout_seconds, int(length) / _BODY_RATE)
                if time.monotonic() + sized < deadline:
                    deadline = time.monotonic() + sized
                    if watchdog is not None:
                        watchdog.cancel()
                    watchdog = _watch(sock, deadline)
            body = self._read(sock, reply, deadline)
            etag = reply.getheader("ETag") or ""
            return _Response(200, etag, body, self._long_poll(reply, wait), elapsed)
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise DownloadError(_LATE) from None
            raise DownloadError(f"no answer from the bundle server within {timeout}s") from None
        except (OSError, http.client.HTTPException) as exc:  # TLS errors included
            if time.monotonic() >= deadline:  # the watchdog cut the connection
                raise DownloadError(_LATE) from None
            raise DownloadError(f"cannot reach the bundle server: {exc}") from None
        except ValueError:  # http.client's invalid header: its message holds the value
            raise DownloadError("cannot send the request: a header value is not valid") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
            conn.close()

    @staticmethod
    def _long_poll(reply: http.client.HTTPResponse, wait: int) -> bool:
        content_type = (reply.getheader("Content-Type") or "").split(";")[0].strip()
        return bool(wait) and content_type == LONG_POLL_CONTENT_TYPE

    def _read(
        self, sock: socket.socket | None, reply: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        limit = self._settings.source.size_limit_bytes
        length = reply.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise DownloadError(f"the bundle is {length} bytes, over size_limit_bytes ({limit})")
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DownloadError(_LATE)
            if sock is not None:
                sock.settimeout(remaining)
            try:
                chunk = reply.read1(_CHUNK)  # whatever arrived: a slow drip cannot fill a chunk
            except TimeoutError:
                raise DownloadError(_LATE) from None
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise DownloadError(f"the bundle is over size_limit_bytes ({limit})")
            chunks.append(chunk)
        if time.monotonic() >= deadline:  # the watchdog cut the connection: a short body
            raise DownloadError(_LATE)
        if length is not None and length.isdigit() and total != int(length):
            raise DownloadError(f"the download ended after {total} of {length} bytes")
        return b"".join(chunks)

    def _authorization(self) -> dict[str, str]:
        bearer = self._settings.service.credentials.bearer
        if bearer is None:
            return {}
        token = bearer.token
        if bearer.token_path is not None:
            try:
                token = bearer.token_path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
                raise DownloadError(f"cannot read the bearer token file: {reason}") from None
            if not header_safe(token):
                raise DownloadError(
                    "bearer token file: contains a line break or a non-latin-1 character"
                )
        return {"Authorization": f"{bearer.scheme} {token}"}

    def _tls(self) -> ssl.SSLContext:
        service = self._settings.service
        credentials = service.credentials
        if credentials.svid:
            if self._svid_context is None:
                raise DownloadError("credentials.svid: no SVID is available")
            try:
                return self._svid_context()
            except Exception as exc:  # identity not ready, no Workload API: a failed round
                raise DownloadError(f"credentials.svid: no SVID: {exc}") from None
        context = ssl.create_default_context()
        if service.tls.ca_cert is not None:
            context.load_verify_locations(cafile=str(service.tls.ca_cert))
        if credentials.client_tls is not None:
            context.load_cert_chain(
                str(credentials.client_tls.cert), str(credentials.client_tls.private_key)
            )
        return context


def _watch(sock: socket.socket | None, deadline: float) -> threading.Timer | None:
    """A timer that cuts ``sock`` at ``deadline`` (monotonic)."""
    if sock is None:
        return None
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (sock,))
    timer.daemon = True
    timer.start()
    return timer


def _cut(sock: socket.socket) -> None:
    """End a round past its deadline: a blocked read returns (EOF) in the poller's thread."""
    with contextlib.suppress(OSError):  # already closed: the round ended
        sock.shutdown(socket.SHUT_RDWR)
