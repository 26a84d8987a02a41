"""Caller attestation: turn what arrived with a gRPC call into a :class:`Subject`.

The one cut-off point between transport and identity: the server hands every attestor a
:class:`CallContext` and gets a subject or an :class:`IdentityError` (answered
UNAUTHENTICATED with the error's code). Anything the agent merely *claims* in metadata
(``x-spiffe-id`` and the like) is never read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from sidecar.identity.errors import IdentityError
from sidecar.identity.jwt_svid import validate_jwt_svid
from sidecar.identity.subject import Subject, parse_spiffe_id
from sidecar.identity.workload import WorkloadIdentity

__all__ = [
    "Attestor",
    "CallContext",
    "JwtAttestor",
    "MtlsAttestor",
    "PodAttestor",
    "StaticAttestor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallContext:
    """What the transport knows about one call."""

    metadata: Sequence[tuple[str, str | bytes]] = ()
    peer: str = ""
    # grpc's auth context: property name -> values (e.g. "x509_pem_cert").
    auth_context: Mapping[str, Sequence[bytes]] = field(default_factory=dict)


class Attestor(Protocol):
    def attest(self, call: CallContext) -> Subject: ...


class StaticAttestor:
    """Every caller is the configured SPIFFE ID. Development only: nothing is verified."""

    def __init__(self, spiffe_id: str) -> None:
        self._subject = Subject(spiffe_id=spiffe_id, attestation="static")
        log.warning(
            "identity.mode=static is INSECURE: every caller is treated as %s without any "
            "attestation; use SPIFFE attestation outside local development",
            spiffe_id,
        )

    def attest(self, call: CallContext) -> Subject:
        return self._subject


class PodAttestor:
    """The sidecar's own X.509-SVID names the workload: SPIRE attested the pod, and only a
    process inside the pod can reach the loopback or unix-socket listener."""

    def __init__(self, identity: WorkloadIdentity) -> None:
        self._identity = identity

    def attest(self, call: CallContext) -> Subject:
        snapshot = self._identity.snapshot()
        return Subject(
            spiffe_id=snapshot.spiffe_id,
            attestation="pod-svid",
            expires_at=int(snapshot.expires_at),
        )


class JwtAttestor:
    """The agent sends its JWT-SVID for our audience as ``authorization: Bearer <token>``."""

    def __init__(
        self, identity: WorkloadIdentity, audience: str, trust_domains: Sequence[str]
    ) -> None:
        self._identity = identity
        self._audience = audience
        self._trust_domains = tuple(trust_domains)

    def attest(self, call: CallContext) -> Subject:
        values = [v for k, v in call.metadata if k.lower() == "authorization"]
        if not values:
            raise IdentityError("no authorization metadata", code="missing_credentials")
        if len(values) > 1:
            raise IdentityError("more than one authorization value", code="jwt_malformed")
        value = values[0].decode() if isinstance(values[0], bytes) else values[0]
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise IdentityError("authorization is not 'Bearer <JWT-SVID>'", code="jwt_malformed")
        bundles = self._identity.jwt_bundles()
        trusted = _trusted(self._trust_domains, self._identity)
        verified = validate_jwt_svid(
            token.strip(),
            audience=self._audience,
            bundles={td: keys for td, keys in bundles.items() if td in trusted},
        )
        claims = {k: v for k, v in verified.claims.items() if k != "jti"}
        return Subject(
            spiffe_id=verified.spiffe_id,
            attestation="jwt-svid",
            claims=claims,
            expires_at=verified.expires_at,
        )


class MtlsAttestor:
    """The agent's X.509-SVID from the TLS handshake (client certificates are required, and
    gRPC has verified the chain against our trust bundles). Checked again here: exactly one
    SPIFFE ID URI SAN, a trusted trust domain, issued by *that* trust domain's bundle, and
    not expired."""

    def __init__(self, identity: WorkloadIdentity, trust_domains: Sequence[str]) -> None:
        self._identity = identity
        self._trust_domains = tuple(trust_domains)

    def attest(self, call: CallContext) -> Subject:
        pem = list(call.auth_context.get("x509_pem_cert", ()))
        if not pem:
            raise IdentityError("no client certificate", code="missing_credentials")
        cert = x509.load_pem_x509_certificate(pem[0])
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        spiffe_uris = [u for u in uris if u.startswith("spiffe://")]
        if len(uris) != 1 or len(spiffe_uris) != 1:
            raise IdentityError(
                "the client certificate must carry exactly one SPIFFE ID URI SAN",
                code="invalid_svid",
            )
        try:
            spiffe_id, trust_domain = parse_spiffe_id(spiffe_uris[0])
        except ValueError as exc:
            raise IdentityError(str(exc), code="invalid_svid") from exc
        if trust_domain not in _trusted(self._trust_domains, self._identity):
            raise IdentityError(
                f"trust domain {trust_domain!r} is not trusted", code="untrusted_domain"
            )
        snapshot = self._identity.snapshot()
        authorities = snapshot.bundles.get(trust_domain, ())
        if not any(_issued_by(cert, ca) for ca in authorities):
            raise IdentityError(
                f"the client certificate is not issued by the {trust_domain} bundle",
                code="untrusted_domain",
            )
        if cert.not_valid_after_utc.timestamp() <= time.time():
            raise IdentityError("the client certificate has expired", code="svid_expired")
        return Subject(
            spiffe_id=spiffe_id,
            attestation="x509-svid",
            expires_at=int(cert.not_valid_after_utc.timestamp()),
        )


def _trusted(configured: Sequence[str], identity: WorkloadIdentity) -> tuple[str, ...]:
    return tuple(configured) or (identity.snapshot().trust_domain,)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # any failure (signature, key type, names) means "not issued by"
        return False
    return True
