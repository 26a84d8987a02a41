"""Has the transaction ended at its origin? Asked of the origin sidecar itself, for sidecars
that do not share a state store (docs/a2a.md "Provenance").

A first sidecar with an inbound listener and ``a2a_inbound.url`` puts its status URL in the
token it mints (``rctx.status``). Every later sidecar, before acting on the token, asks that
URL over mutual TLS with its own SVID; the answering server must present the X.509-SVID of
the sidecar that minted the first token (so nobody else can vouch for the transaction).
``ended``, ``unknown`` to the origin, or no answer: the call is refused with ``txn_ended``
(fail closed), with one generic message (the details are logged, never told to the caller:
the URL comes from a token, so its answers must not become a port scanner's). The check runs
only after policy allowed the call, only against ``a2a_inbound.txn_status_hosts``, and its
answer is kept per transaction for a few seconds (an ``ended`` one for longer: it is final).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from urllib.parse import urlsplit

from cryptography import x509

from sidecar.a2a.errors import TxnEnded
from sidecar.identity.credentials import mtls_context
from sidecar.identity.workload import WorkloadIdentity

__all__ = ["STATUS_PATH", "TxnStatusClient", "status_answer"]

log = logging.getLogger(__name__)

STATUS_PATH = "/.well-known/agent-sidecar/txn/"
TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 4096
ACTIVE_CACHE_S = 2.0
ENDED_CACHE_S = 300.0
MAX_CACHED = 4096
GENERIC = "the transaction's origin did not confirm that it is active"


def status_answer(txn: str, state: str) -> dict[str, str]:
    """What the origin's listener answers: ``active``, ``ended`` or ``unknown``."""
    return {"txn": txn, "state": state}


class TxnStatusClient:
    """Asks origin sidecars, over mTLS with this sidecar's SVID."""

    def __init__(
        self,
        identity: WorkloadIdentity,
        hosts: tuple[str, ...] = (),
        active_cache_s: float = ACTIVE_CACHE_S,
    ) -> None:
        self._identity = identity
        self._active_cache_s = active_cache_s
        self._hosts = frozenset(h.lower() for h in hosts)  # HOST:PORT that may be asked
        self._context: ssl.SSLContext | None = None
        self._rotation = -1
        self._cache: dict[str, tuple[float, bool]] = {}  # origin+URL -> (until, active)

    def _tls(self) -> ssl.SSLContext:
        if self._context is None or self._rotation != self._identity.rotations:
            context = mtls_context(self._identity.snapshot())
            context.check_hostname = False  # SPIFFE: the URI SAN is checked below instead
            self._context, self._rotation = context, self._identity.rotations
        return self._context

    async def check(self, status_url: str, txn: str, origin: str) -> None:
        """Return when ``origin`` (a SPIFFE ID) says ``txn`` is active; raise ``TxnEnded``
        (with a generic message) otherwise."""
        now = time.monotonic()
        key = f"{origin} {status_url}"  # the txn, as vouched for by that origin
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if cached[1]:
                return
            raise TxnEnded(GENERIC)
        try:
            state = await self._ask(status_url, txn, origin)
        except TxnEnded as exc:
            log.warning("txn status %s at %s: %s", txn, status_url, exc)
            raise TxnEnded(GENERIC) from None
        if state == "active":
            if self._active_cache_s > 0:
                self._remember(key, now + self._active_cache_s, True)
            return
        log.warning("txn status %s at %s: %s", txn, status_url, state or "no valid answer")
        if state == "ended":
            self._remember(key, now + ENDED_CACHE_S, False)
        raise TxnEnded(GENERIC)

    def _remember(self, key: str, until: float, active: bool) -> None:
        if len(self._cache) >= MAX_CACHED:
            now = time.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (until, active)

    async def _ask(self, status_url: str, txn: str, origin: str) -> str:
        """The origin's answer: ``active``, ``ended``, ``unknown`` or "" (unreadable)."""
        try:
            url = urlsplit(status_url)
            host, port = url.hostname, url.port or 443
        except ValueError:
            raise TxnEnded("the status URL is not a URL") from None
        if url.scheme != "https" or not host or url.path != STATUS_PATH + txn:
            raise TxnEnded("the transaction token's status URL is not an origin status URL")
        if f"{host}:{port}".lower() not in self._hosts:
            raise TxnEnded(f"{host}:{port} is not in a2a_inbound.txn_status_hosts")
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._tls(), server_hostname=host
                )
                try:
                    ssl_object = writer.get_extra_info("ssl_object")
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                    writer.write(
                        f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                        "Connection: close\r\n\r\n".encode("ascii")
                    )
                    await writer.drain()
                    answer = await reader.read(MAX_ANSWER_BYTES)
                finally:
                    writer.close()
        except (OSError, TimeoutError, ssl.SSLError, UnicodeError) as exc:
            raise TxnEnded(f"the transaction's origin cannot be asked: {exc}") from None
        if der is None or _spiffe_id(der) != origin:
            raise TxnEnded("the status URL is not served by the transaction's origin")
        head, _, body = answer.partition(b"\r\n\r\n")
        try:
            ok = head.split(b"\r\n", 1)[0].split(b" ")[1] == b"200"
            state = json.loads(body)["state"] if ok else ""
        except (ValueError, KeyError, TypeError, IndexError):
            state = ""
        return state if isinstance(state, str) else ""

    async def aclose(self) -> None:
        """Nothing is kept open between checks."""


def _spiffe_id(der: bytes) -> str:
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return ""
    return uris[0] if len(uris) == 1 else ""
