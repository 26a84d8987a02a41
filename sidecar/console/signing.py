"""Whose key signs the console's audit checkpoints.

Like ``serve``: with a Workload API configured (``identity.mode`` other than ``static``, or
``identity.socket``) and no ``audit.signing_key``, the console's X.509-SVID signs them, so
``audit verify --bundle`` checks the console's log against the same trust bundle as every
sidecar's. Otherwise a key file signs them (``audit.signing_key``, else ``audit-signing.key``
beside the log), and ``audit verify`` needs ``--key`` for that log.
"""

from __future__ import annotations

import logging

from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.identity import WorkloadIdentity

__all__ = ["SVID_READY_TIMEOUT_S", "console_identity", "wait_for_svid"]

log = logging.getLogger(__name__)

# How long a starting console waits for its first SVID before refusing to start.
SVID_READY_TIMEOUT_S = 30.0


def console_identity(settings: Settings) -> WorkloadIdentity | None:
    """The Workload API connection whose SVID signs the console's checkpoints, or ``None``
    when a key file signs them."""
    identity = settings.identity
    if settings.audit.signing_key is not None:
        return None
    if identity.mode == "static" and not identity.socket:
        log.warning(
            "the console signs its audit checkpoints with a key file, not an SVID (no "
            "identity.socket): verify its log with audit verify --key",
            extra={"key_file": str(settings.audit.path.parent / "audit-signing.key")},
        )
        return None
    from sidecar.components import workload_api_socket

    return WorkloadIdentity(
        workload_api_socket(settings), refresh_margin_s=identity.jwt_refresh_margin_s
    )


def wait_for_svid(identity: WorkloadIdentity, timeout_s: float | None = None) -> None:
    """Blocks until the first SVID arrives; a console that could not sign does not start."""
    timeout_s = SVID_READY_TIMEOUT_S if timeout_s is None else timeout_s
    if not identity.wait_ready(timeout_s):
        raise SidecarError(
            f"no X.509-SVID from the Workload API within {timeout_s:.0f}s: the console signs "
            "its audit checkpoints with it (identity.socket), and does not start without it"
        )
