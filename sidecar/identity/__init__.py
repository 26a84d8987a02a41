"""SPIFFE identity: who is calling the sidecar, and what it presents to upstreams."""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "ATTESTATIONS",
    "Attestor",
    "CallContext",
    "DelegationSettings",
    "IdentityError",
    "IdentitySettings",
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

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.identity.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "Attestor": "attest",
        "CallContext": "attest",
        "JwtAttestor": "attest",
        "MtlsAttestor": "attest",
        "PodAttestor": "attest",
        "StaticAttestor": "attest",
        "UpstreamCredentials": "credentials",
        "IdentityError": "errors",
        "InvalidSpiffeIdError": "errors",
        "ATTESTATIONS": "subject",
        "Subject": "subject",
        "parse_spiffe_id": "subject",
        "Snapshot": "workload",
        "WorkloadIdentity": "workload",
        "DelegationSettings": "settings",
        "IdentitySettings": "settings",
    },
)
