"""``agent-sidecar dev workload-api``: a DEVELOPMENT-ONLY SPIFFE Workload API on unix sockets.

One development authority (CA + JWT key) for the trust domain; one socket per identity.
SIGHUP, or ``--rotate-every``, rotates every SVID and the JWT key. Never use it in production:
it attests nothing and keeps its keys in memory.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from sidecar.errors import SidecarError
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.identity.subject import parse_spiffe_id

__all__ = ["run_dev_workload_api"]

log = logging.getLogger(__name__)


def run_dev_workload_api(
    *,
    trust_domain: str,
    identities: Sequence[tuple[str, str]],
    x509_ttl_s: float,
    jwt_ttl_s: float,
    rotate_every_s: float | None,
    bundle_out: Path | None,
    dns_names: Sequence[str] = (),
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``identities`` are (socket path, SPIFFE ID)."""
    for _, spiffe_id in identities:
        try:
            _, td = parse_spiffe_id(spiffe_id)
        except ValueError as exc:
            raise SidecarError(f"--spiffe-id: {exc}") from exc
        if td != trust_domain:
            raise SidecarError(f"--spiffe-id {spiffe_id} is not in trust domain {trust_domain}")
    authority = DevAuthority(trust_domain, x509_ttl_s=x509_ttl_s, jwt_ttl_s=jwt_ttl_s)
    servers = [
        DevWorkloadApiServer(
            DevWorkloadApi(authority, spiffe_id, dns_names=tuple(dns_names)), socket
        ).start()
        for socket, spiffe_id in identities
    ]
    if bundle_out is not None:
        bundle_out.write_bytes(authority.x509_bundle_pem)
    stop = stop or threading.Event()
    rotate = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, lambda *_: rotate.set())
    print(
        f"DEVELOPMENT ONLY Workload API for {trust_domain}: "
        + ", ".join(f"{sid} on {sock}" for sock, sid in identities),
        flush=True,
    )
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(rotate_every_s if rotate_every_s else 0.2):
            if rotate_every_s or rotate.is_set():
                rotate.clear()
                for server in servers:
                    server.api.rotate()
                log.warning("rotated every SVID and the JWT signing key")
    finally:
        for server in servers:
            server.stop()
    return 0
