"""Who is calling the agent: every inbound A2A caller verified before anything else happens.

Three ways, each with the verifier the rest of the sidecar already uses (no second JWT
validation path): the caller's X.509-SVID from the TLS handshake (``MtlsAttestor``), a
JWT-SVID bearer whose audience is this agent's SPIFFE ID (``JwtAttestor``), or a user token
from the configured issuer (``UserVerifier``). A bearer, when sent, decides: it must verify
even if a client certificate was presented too. Nothing the caller merely claims (an
``x-agent-sidecar-*`` header, a body field) is read. Failures are ``caller_unverified`` with
the verifier's own reason in the message; the token never appears in one.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.a2a.errors import CallerUnverified
from sidecar.identity import CallContext, IdentityError, Subject, WorkloadIdentity
from sidecar.identity.attest import JwtAttestor, MtlsAttestor
from sidecar.users import User, UserTokenError, UserVerifier

__all__ = ["Caller", "CallerUnverified", "CallerVerifier", "UserSubject", "VerifiedCallers"]

# Verified client certificates kept (one per calling workload and SVID in practice).
MAX_CACHED_CALLERS = 1024


@dataclass(frozen=True)
class UserSubject:
    """``input.subject`` for a person calling with a user token (``input.user`` says more).
    ``spiffe_id`` holds the issuer-qualified id, so approvals bind to the person."""

    spiffe_id: str
    user: User = field(repr=False)

    def to_input(self) -> dict[str, Any]:
        return {
            "spiffe_id": self.spiffe_id,
            "trust_domain": "",
            "attestation": "user-token",
            "claims": {},
            "expires_at": self.user.expires_at,
        }


@dataclass(frozen=True)
class Caller:
    """A verified inbound caller: ``input.inbound.caller`` and the agent's headers."""

    kind: Literal["workload", "user"]
    id: str
    via: Literal["mtls", "jwt_svid", "user_token"]
    subject: Subject | UserSubject
    user: User | None = None

    def to_input(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "via": self.via}


def user_id(user: User) -> str:
    """A person's issuer-qualified id: ``user:ISSUER_NAME/sub``."""
    return f"user:{user.issuer}/{user.sub}"


class CallerVerifier:
    """Verifies inbound callers for one agent (``agent_id``: the JWT-SVID audience)."""

    def __init__(
        self,
        identity: WorkloadIdentity,
        *,
        agent_id: Callable[[], str],
        trust_domains: tuple[str, ...],
        accept_jwt_svid: bool,
        users: UserVerifier | None,
        user_issuer: str,
        user_issuer_url: str,
    ) -> None:
        self._identity = identity
        self._trust_domains = trust_domains
        self._agent_id = agent_id  # read per call: the SVID may arrive after the build
        self._mtls = MtlsAttestor(identity, trust_domains)
        self._accept_jwt_svid = accept_jwt_svid
        self._users = users if user_issuer else None
        self._user_issuer = user_issuer
        self._user_issuer_url = user_issuer_url
        self._verified = VerifiedCallers()

    @property
    def bearer_accepted(self) -> bool:
        """A caller may come without a client certificate."""
        return self._accept_jwt_svid or self._users is not None

    async def verify(self, authorization: list[str], peer_cert_der: bytes | None) -> Caller:
        if len(authorization) > 1:
            raise CallerUnverified("more than one Authorization header", reason="jwt_malformed")
        if authorization:
            return await self._bearer(authorization[0])
        if peer_cert_der is None:
            raise CallerUnverified(
                "no client certificate and no bearer token", reason="missing_credentials"
            )
        try:
            snapshot = self._identity.snapshot()  # this sidecar's SVID and bundles, now
            cached = self._verified.get(peer_cert_der, snapshot)
            if cached is not None:
                return cached
            pem = x509.load_der_x509_certificate(peer_cert_der).public_bytes(
                serialization.Encoding.PEM
            )
            subject = self._mtls.attest(CallContext(auth_context={"x509_pem_cert": [pem]}))
        except IdentityError as exc:
            raise CallerUnverified(str(exc), reason=exc.code) from exc
        caller = Caller("workload", subject.spiffe_id, "mtls", subject)
        self._verified.put(peer_cert_der, snapshot, caller, subject.expires_at)
        return caller

    async def _bearer(self, value: str) -> Caller:
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CallerUnverified("Authorization is not 'Bearer <token>'", reason="jwt_malformed")
        if self._users is not None and _issuer(token) == self._user_issuer_url:
            try:
                user = await self._users.verify(token)
            except UserTokenError as exc:
                raise CallerUnverified(str(exc), reason=exc.code) from exc
            if user.issuer != self._user_issuer:  # another configured issuer: not for A2A
                raise CallerUnverified(
                    "the user token is not from a2a_inbound.users.issuer",
                    reason="user_token_untrusted_issuer",
                )
            uid = user_id(user)
            return Caller("user", uid, "user_token", UserSubject(uid, user), user)
        if not self._accept_jwt_svid:
            raise CallerUnverified(
                "JWT-SVID bearers are not accepted here (a2a_inbound.accept_jwt_svid)",
                reason="missing_credentials",
            )
        try:
            attestor = JwtAttestor(self._identity, self._agent_id(), self._trust_domains)
            subject = attestor.attest(CallContext(metadata=(("authorization", value),)))
        except IdentityError as exc:
            raise CallerUnverified(str(exc), reason=exc.code) from exc
        return Caller("workload", subject.spiffe_id, "jwt_svid", subject)


class VerifiedCallers:
    """Client certificates already verified, keyed by their DER, each valid only under the
    identity snapshot (this sidecar's SVID and trust bundles) it was verified with: any
    rotation or bundle change verifies again. Bounded; an entry ends with its certificate."""

    def __init__(self, max_entries: int = MAX_CACHED_CALLERS) -> None:
        self._max = max_entries
        self._entries: dict[bytes, tuple[Any, Caller, float]] = {}

    def get(self, der: bytes, snapshot: Any) -> Caller | None:
        entry = self._entries.get(der)
        if entry is None:
            return None
        verified_under, caller, expires_at = entry
        if verified_under is not snapshot or time.time() >= expires_at:
            self._entries.pop(der, None)
            return None
        return caller

    def put(self, der: bytes, snapshot: Any, caller: Caller, expires_at: float) -> None:
        self._entries.pop(der, None)  # a replaced entry moves to the end, evicting nothing
        if len(self._entries) >= self._max:  # the oldest goes (insertion order)
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[der] = (snapshot, caller, expires_at)

    def __len__(self) -> int:
        return len(self._entries)


def _issuer(token: str) -> str:
    """The unverified ``iss``, only to pick the verifier (each verifies everything)."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return ""
    return iss if isinstance(iss, str) else ""


def peer_certificate(ssl_object: ssl.SSLObject | None) -> bytes | None:
    """The DER client certificate the TLS handshake verified, if the caller sent one."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)
