"""The ``approvals`` section: the approvers' API and the limits on pending approvals."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sidecar.validate import SPIFFE_ID_RE, check, check_address

__all__ = ["ApprovalSettings"]


@dataclass(frozen=True)
class ApprovalSettings:
    """Step-up approvals: the approver-facing admin API and the limits on pending requests."""

    # unix:///PATH (who may connect is decided by the socket file's permissions) or HOST:PORT
    # (mTLS: the approver's X.509-SVID must be in `approvers`). Empty: <state.dir>/approvals.sock.
    listen: str = ""
    # Octal permission bits of the unix socket file.
    socket_mode: str = "0600"
    # SPIFFE IDs allowed to approve over mTLS (required for a HOST:PORT listener).
    approvers: tuple[str, ...] = ()
    # Names for the `approvers` of a decision's approval obligation: group -> members
    # (SPIFFE IDs, or local:NAME for operators on the unix socket).
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Upper bound on an approval's lifetime, whatever the obligation's ttl_s.
    max_ttl_s: int = 3600
    # Step-up flood control per subject: pending approvals held at once, new ones per minute.
    max_pending_per_subject: int = 10
    max_new_per_minute: int = 30
    # POSTs each new pending approval as JSON (chat, ticketing). Empty: off.
    notify_url: str = ""
    notify_attempts: int = 5
    notify_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            check_address(self.listen)
            check(
                len(self.approvers) > 0,
                "approvers: required when listen is HOST:PORT (mTLS); list the SPIFFE IDs "
                "allowed to approve, or listen on a unix socket",
            )
        check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None,
            f"socket_mode: {self.socket_mode!r} is not octal permission bits like 0600",
        )
        for approver in self.approvers:
            check(
                SPIFFE_ID_RE.match(approver) is not None,
                f"approvers: {approver!r} is not a SPIFFE ID",
            )
        check(self.max_ttl_s > 0, "max_ttl_s: must be > 0")
        check(self.max_pending_per_subject > 0, "max_pending_per_subject: must be > 0")
        check(self.max_new_per_minute > 0, "max_new_per_minute: must be > 0")
        if self.notify_url:
            parts = urlsplit(self.notify_url)
            check(
                parts.scheme in ("http", "https") and bool(parts.hostname),
                f"notify_url: {self.notify_url!r} is not an http(s) URL",
            )
        check(self.notify_attempts >= 1, "notify_attempts: must be >= 1")
        check(self.notify_timeout_s > 0, "notify_timeout_s: must be > 0")
