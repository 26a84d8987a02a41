"""The ``identity`` and ``delegation`` sections: how callers are attested and how far a
delegation chain is verified."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sidecar.validate import SPIFFE_ID_RE, check

__all__ = ["DelegationSettings", "IdentitySettings"]


@dataclass(frozen=True)
class IdentitySettings:
    """Who the caller is.

    ``pod``: the sidecar's own X.509-SVID names the workload (loopback/unix listener only).
    ``jwt``: the agent sends a JWT-SVID for ``audience`` as ``authorization: Bearer``.
    ``mtls``: the agent connects with its X.509-SVID; the listener requires client certs.
    ``static``: every caller is ``spiffe_id``, unattested: local development only.
    """

    mode: Literal["pod", "jwt", "mtls", "static"] = "pod"
    # Workload API socket (unix path or unix:// URI); default: $SPIFFE_ENDPOINT_SOCKET.
    socket: str = ""
    # jwt mode: the audience the agent's JWT-SVID must carry.
    audience: str = ""
    # Trust domains whose callers are accepted (jwt, mtls); default: the sidecar's own.
    trust_domains: tuple[str, ...] = ()
    # static mode only.
    spiffe_id: str = ""
    # Cached JWT-SVIDs for upstreams are refreshed this long before they expire.
    jwt_refresh_margin_s: float = 30.0
    # pod mode: also serve TCP loopback listeners (server.listen HOST:PORT, the front door).
    # Every process in the network namespace is then the pod's agent: in Kubernetes every
    # container of the pod. Off: pod mode serves unix sockets only.
    pod_tcp: bool = False

    def __post_init__(self) -> None:
        if self.mode == "static":
            check(bool(self.spiffe_id), "spiffe_id: required when mode is static")
            check(
                SPIFFE_ID_RE.match(self.spiffe_id) is not None,
                f"spiffe_id: {self.spiffe_id!r} is not a SPIFFE ID (spiffe://trust-domain/path)",
            )
        else:
            check(not self.spiffe_id, f"spiffe_id: only for mode static, not {self.mode}")
        if self.mode == "jwt":
            check(bool(self.audience), "audience: required when mode is jwt")
            check(
                not self.audience.startswith("agent-sidecar-delegate:"),
                "audience: agent-sidecar-delegate: is reserved for delegation links",
            )
        for td in self.trust_domains:
            check(
                re.fullmatch(r"[a-z0-9._-]+", td) is not None,
                f"trust_domains: {td!r} is not a trust domain name (no spiffe:// prefix)",
            )
        check(self.jwt_refresh_margin_s >= 0, "jwt_refresh_margin_s: must be >= 0")


@dataclass(frozen=True)
class DelegationSettings:
    """Delegation chains: the most links the sidecar verifies before refusing a chain (a
    bound on work; how deep a chain may be is policy's, data.agentsidecar.max_delegation_depth)."""

    max_links: int = 8

    def __post_init__(self) -> None:
        check(1 <= self.max_links <= 32, "max_links: must be between 1 and 32")
