"""The attested caller, as policy sees it in ``input.subject``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.identity.errors import InvalidSpiffeIdError

__all__ = ["ATTESTATIONS", "Subject"]

# How the subject was established; "static" is configured, not attested, and is insecure.
ATTESTATIONS = ("pod-svid", "jwt-svid", "x509-svid", "static")
_SPIFFE_ID = re.compile(r"^spiffe://([a-z0-9._-]+)((/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*)$")


@dataclass(frozen=True)
class Subject:
    """A verified (or, for ``static``, configured) SPIFFE identity."""

    spiffe_id: str
    attestation: str
    claims: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        match = _SPIFFE_ID.match(self.spiffe_id)
        if match is None:
            raise InvalidSpiffeIdError(f"{self.spiffe_id!r} is not a SPIFFE ID")
        if any(seg in (".", "..") for seg in match.group(2).split("/")[1:]):
            raise InvalidSpiffeIdError(f"{self.spiffe_id!r} has a dot segment in its path")
        if self.attestation not in ATTESTATIONS:
            raise ValueError(f"attestation {self.attestation!r} is not one of {ATTESTATIONS}")

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id[len("spiffe://") :].split("/", 1)[0]

    def to_input(self) -> dict[str, Any]:
        """The ``input.subject`` object of policy input v1."""
        return {
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "attestation": self.attestation,
            "claims": dict(self.claims),
        }
