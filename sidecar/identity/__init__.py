"""SPIFFE identity: who is calling the sidecar, and what it presents to upstreams."""

from __future__ import annotations

from sidecar.identity.attest import (
    Attestor,
    CallContext,
    JwtAttestor,
    MtlsAttestor,
    PodAttestor,
    StaticAttestor,
)
from sidecar.identity.credentials import UpstreamCredentials
from sidecar.identity.errors import IdentityError, InvalidSpiffeIdError
from sidecar.identity.subject import ATTESTATIONS, Subject, parse_spiffe_id
from sidecar.identity.workload import Snapshot, WorkloadIdentity

__all__ = [
    "ATTESTATIONS",
    "Attestor",
    "CallContext",
    "IdentityError",
    "InvalidSpiffeIdError",
    "JwtAttestor",
    "MtlsAttestor",
    "PodAttestor",
    "Snapshot",
    "StaticAttestor",
    "Subject",
    "UpstreamCredentials",
    "WorkloadIdentity",
    "parse_spiffe_id",
]
