"""gRPC server credentials from the sidecar's X.509-SVID: mutual TLS for every listener that
attests callers by their certificate (the agent API in mode mtls, the approvals API on
HOST:PORT). Here, in identity, so that any transport can use it without importing another."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from sidecar.identity.workload import WorkloadIdentity

__all__ = ["mtls_server_credentials"]

log = logging.getLogger(__name__)


def mtls_server_credentials(
    identity: WorkloadIdentity, trust_domains: tuple[str, ...] | list[str]
) -> grpc.ServerCredentials:
    """TLS with client certificates required, from the sidecar's X.509-SVID, re-read after
    each rotation; clients are verified against the bundles of ``trust_domains`` (default:
    the sidecar's own)."""
    trusted = list(trust_domains) or None

    def configuration() -> Any:
        snapshot = identity.snapshot()
        roots = snapshot.bundle_pem(trusted or [snapshot.trust_domain])
        return grpc.ssl_server_certificate_configuration(
            [(snapshot.key_pem(), snapshot.chain_pem())], root_certificates=roots
        )

    seen = {"rotations": identity.rotations}

    def fetch() -> Any:
        if identity.rotations == seen["rotations"]:
            return None
        try:
            config = configuration()
        except Exception:  # an expired snapshot: keep serving the last configuration
            log.exception("cannot rotate the mTLS certificate")
            return None
        seen["rotations"] = identity.rotations
        return config

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )
