"""TLS for the inbound A2A listener from the sidecar's X.509-SVID, re-read after each rotation
(like sidecar/identity/server_tls.py for gRPC). Callers' certificates are verified against the
trust bundles in the handshake; required unless a bearer may stand in for one."""

from __future__ import annotations

import asyncio
import logging
import ssl

from sidecar.identity.credentials import load_svid
from sidecar.identity.workload import Snapshot, WorkloadIdentity

__all__ = ["svid_server_context"]

log = logging.getLogger(__name__)


def svid_server_context(
    identity: WorkloadIdentity,
    trust_domains: tuple[str, ...],
    *,
    require_client_cert: bool,
    loop: asyncio.AbstractEventLoop | None = None,
) -> ssl.SSLContext:
    """A server context serving the current SVID; later SVIDs are loaded into it as the
    Workload API delivers them (on ``loop``, so never during a handshake on it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load(context, identity.snapshot(), trust_domains)

    def rotated(snapshot: Snapshot) -> None:
        def load() -> None:
            try:
                _load(context, snapshot, trust_domains)
            except Exception:  # keep serving the last certificate
                log.exception("cannot load the rotated X.509-SVID into the A2A listener")

        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(load)
        else:
            load()

    identity.subscribe(rotated)
    return context


def _load(context: ssl.SSLContext, snapshot: Snapshot, trust_domains: tuple[str, ...]) -> None:
    bundle = snapshot.bundle_pem(list(trust_domains) or [snapshot.trust_domain])
    context.load_verify_locations(cadata=bundle.decode("ascii"))
    load_svid(context, snapshot)  # through a memfd: the key never touches a filesystem
