"""SPIFFE identity: who is calling the sidecar."""

from __future__ import annotations

from sidecar.identity.attest import Attestor, StaticAttestor
from sidecar.identity.errors import IdentityError, InvalidSpiffeIdError
from sidecar.identity.subject import ATTESTATIONS, Subject

__all__ = [
    "ATTESTATIONS",
    "Attestor",
    "IdentityError",
    "InvalidSpiffeIdError",
    "StaticAttestor",
    "Subject",
]
