"""The attested caller, as policy sees it in ``input.subject``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.identity.errors import InvalidSpiffeIdError

__all__ = ["ATTESTATIONS", "Subject", "parse_spiffe_id"]

# How the subject was established; "static" is configured, not attested, and is insecure;
# "authzen" was asserted by an AuthZEN caller (a policy enforcement point), not attested here.
ATTESTATIONS = ("pod-svid", "jwt-svid", "x509-svid", "static", "authzen")
_SPIFFE_ID = re.compile(r"^spiffe://([a-z0-9._-]+)((/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*)$")


def parse_spiffe_id(value: str) -> tuple[str, str]:
    """Return ``(spiffe_id, trust_domain)``; raise ``InvalidSpiffeIdError`` if it is not one."""
    match = _SPIFFE_ID.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidSpiffeIdError(f"{value!r} is not a SPIFFE ID")
    if any(seg in (".", "..") for seg in match.group(2).split("/")[1:]):
        raise InvalidSpiffeIdError(f"{value!r} has a dot segment in its path")
    return value, match.group(1)


@dataclass(frozen=True)
class Subject:
    """A verified (or, for ``static``, configured) SPIFFE identity."""

    spiffe_id: str
    attestation: str
    claims: dict[str, Any] = field(default_factory=dict)
    # When the credential that established this subject expires (unix seconds), if known.
    expires_at: int | None = None

    def __post_init__(self) -> None:
        parse_spiffe_id(self.spiffe_id)
        if self.attestation not in ATTESTATIONS:
            raise ValueError(f"attestation {self.attestation!r} is not one of {ATTESTATIONS}")

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id[len("spiffe://") :].split("/", 1)[0]

    def to_input(self) -> dict[str, Any]:
        """The ``input.subject`` object of policy input v1."""
        doc: dict[str, Any] = {
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "attestation": self.attestation,
            "claims": dict(self.claims),
        }
        if self.expires_at is not None:
            doc["expires_at"] = self.expires_at
        return doc
