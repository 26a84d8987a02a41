"""The sidecar's own view of the SPIFFE Workload API (py-spiffe's ``WorkloadApiClient``).

Two streams run in the background: X.509 contexts (our SVID and the trust bundles) and JWT
bundles. py-spiffe reconnects them with backoff when the Workload API goes away. This class
keeps the last good snapshot, so calls keep being served with the cached SVID while the API
is briefly down; once that SVID has expired, anything that needs it fails
(``svid_expired``). Listeners are told about every rotation (the mTLS listener re-reads its
certificate on the next handshake).

JWT-SVIDs for upstream audiences are fetched per audience and cached only until shortly before
they expire. Tokens of different audiences are never shared.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError

from sidecar.identity.errors import IdentityError
from sidecar.identity.jwt_svid import JwtBundles

__all__ = ["Snapshot", "WorkloadIdentity", "parse_jwt_bundles"]

log = logging.getLogger(__name__)


def parse_jwt_bundles(raw: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """Workload API JWT bundles (``spiffe://td`` -> JWKS bytes) -> td -> kid -> public key."""
    out: dict[str, dict[str, Any]] = {}
    for key, jwks in raw.items():
        keyset = jwt.PyJWKSet.from_json(jwks.decode("utf-8"))
        out[key.removeprefix("spiffe://")] = {k.key_id: k.key for k in keyset.keys if k.key_id}
    return out


@dataclass(frozen=True)
class Snapshot:
    """The sidecar's X.509-SVID and trust bundles at one moment."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    private_key: Any
    bundles: Mapping[str, tuple[x509.Certificate, ...]]  # trust domain -> CA certificates

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]

    @property
    def expires_at(self) -> float:
        return self.chain[0].not_valid_after_utc.timestamp()

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def bundle_pem(self, trust_domains: list[str] | None = None) -> bytes:
        certs = [
            cert
            for td, authorities in sorted(self.bundles.items())
            if trust_domains is None or td in trust_domains
            for cert in authorities
        ]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class WorkloadIdentity:
    """Background streams from the Workload API, a cached snapshot, and JWT-SVID fetching."""

    def __init__(self, socket: str, *, refresh_margin_s: float = 30.0) -> None:
        self._socket = socket if "://" in socket else f"unix://{socket}"
        self._refresh_margin_s = refresh_margin_s
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._snapshot: Snapshot | None = None
        self._jwt_bundles: dict[str, dict[str, Any]] = {}
        self._jwt_ready = threading.Event()
        self._listeners: list[Callable[[Snapshot], None]] = []
        # (scope, audience) -> (token, expires_at); scope: the task a token was minted for.
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._client: WorkloadApiClient | None = None
        self._handlers: list[Any] = []
        self._closed = threading.Event()
        self.rotations = 0
        threading.Thread(target=self._connect, name="workload-api", daemon=True).start()

    # --- lifecycle ----------------------------------------------------------------------

    def _connect(self) -> None:
        """Create the client (the socket may not exist yet, e.g. before the CSI mount)."""
        delay = 0.1
        while not self._closed.is_set():
            try:
                self._client = WorkloadApiClient(socket_path=self._socket)
                break
            except PySpiffeError as exc:
                log.warning("workload API not reachable yet", extra={"error": str(exc)})
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)
        if self._client is None:
            return
        self._handlers.append(self._client.stream_x509_contexts(self._on_x509, self._on_error))
        self._handlers.append(self._client.stream_jwt_bundles(self._on_jwt_bundles, self._on_error))

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return self._ready.wait(timeout_s) and self._jwt_ready.wait(timeout_s)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._jwt_ready.is_set()

    def close(self) -> None:
        self._closed.set()
        for handler in self._handlers:
            handler.cancel()
        if self._client is not None:
            self._client.close()

    # --- stream callbacks ---------------------------------------------------------------

    def _on_x509(self, context: Any) -> None:
        svid = context.default_svid
        bundles = {
            b.trust_domain.name: tuple(b.x509_authorities) for b in context.x509_bundle_set.bundles
        }
        snapshot = Snapshot(
            spiffe_id=str(svid.spiffe_id),
            chain=tuple(svid.cert_chain),
            private_key=svid.private_key,
            bundles=bundles,
        )
        with self._lock:
            first = self._snapshot is None
            self._snapshot = snapshot
            listeners = list(self._listeners)
        # Listeners (e.g. the mTLS client contexts) run before the identity counts as ready or
        # rotated: whoever waits on either then finds them in place.
        for listener in listeners:
            listener(snapshot)
        if not first:
            with self._lock:
                self.rotations += 1
        self._ready.set()
        log.info(
            "x509-svid received" if first else "x509-svid rotated",
            extra={"spiffe_id": snapshot.spiffe_id, "expires_at": int(snapshot.expires_at)},
        )

    def _on_jwt_bundles(self, bundle_set: Any) -> None:
        bundles = {b.trust_domain.name: dict(b.jwt_authorities) for b in bundle_set.bundles}
        with self._lock:
            self._jwt_bundles = bundles
        self._jwt_ready.set()

    def _on_error(self, error: Exception) -> None:
        # py-spiffe gave up on a stream (a non-retryable status). Keep the cached snapshot and
        # start over; the SVID's own expiry bounds how long the cache is used.
        log.error("workload API stream failed; reconnecting", extra={"error": str(error)})
        if not self._closed.is_set():
            self._closed.wait(1.0)
            if not self._closed.is_set() and self._client is not None:
                self._handlers = [h for h in self._handlers if not h.is_cancelled()]
                threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        assert self._client is not None
        self._handlers.append(self._client.stream_x509_contexts(self._on_x509, self._on_error))
        self._handlers.append(self._client.stream_jwt_bundles(self._on_jwt_bundles, self._on_error))

    # --- what the rest of the sidecar uses ----------------------------------------------

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def snapshot(self) -> Snapshot:
        """The current, unexpired X.509-SVID and bundles; raises ``IdentityError`` otherwise."""
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            raise IdentityError("no X.509-SVID received yet", code="identity_not_ready")
        if snapshot.expired():
            raise IdentityError(
                "the sidecar's X.509-SVID has expired and no new one arrived", code="svid_expired"
            )
        return snapshot

    def jwt_bundles(self) -> JwtBundles:
        with self._lock:
            bundles = self._jwt_bundles
        if not bundles:
            raise IdentityError("no JWT bundles received yet", code="identity_not_ready")
        return bundles

    def jwt_svid(
        self, audience: str, *, scope: str = "", timeout_s: float = 5.0
    ) -> tuple[str, float]:
        """A JWT-SVID for exactly ``audience`` and its expiry, cached per ``scope`` (a task id,
        so that ending the task can drop it) until shortly before it expires."""
        cached = self.cached_jwt_svid(audience, scope=scope)
        if cached is not None:
            return cached
        if self._client is None:
            raise IdentityError("the Workload API is not connected", code="identity_not_ready")
        try:
            svid = self._client.fetch_jwt_svid(audience={audience}, timeout=timeout_s)
        except PySpiffeError as exc:
            raise IdentityError(
                f"cannot fetch a JWT-SVID for audience {audience!r}: {exc}",
                code="credential_unavailable",
            ) from exc
        if set(svid.audience) != {audience}:
            raise IdentityError(
                "the Workload API issued a JWT-SVID for other audiences",
                code="credential_unavailable",
            )
        entry = (svid.token, float(svid.expiry))
        with self._lock:
            self._tokens[(scope, audience)] = entry
        return entry

    def cached_jwt_svid(self, audience: str, *, scope: str = "") -> tuple[str, float] | None:
        """The cached JWT-SVID that :meth:`jwt_svid` would return without asking, or None."""
        with self._lock:
            cached = self._tokens.get((scope, audience))
        if cached is not None and cached[1] - time.time() > self._refresh_margin_s:
            return cached
        return None

    def forget_tokens(self, scope: str | None = None) -> int:
        """Drop cached JWT-SVIDs: those of ``scope``, or all; returns how many."""
        with self._lock:
            keys = [k for k in self._tokens if scope is None or k[0] == scope]
            for key in keys:
                del self._tokens[key]
        return len(keys)

    def cached_scopes(self) -> set[str]:
        with self._lock:
            return {scope for scope, _ in self._tokens}
