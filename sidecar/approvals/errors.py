"""Errors of step-up approvals; ``code`` is the stable snake_case code of the call's outcome."""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = ["ApprovalError", "ApproverRefused"]


class ApprovalError(SidecarError):
    """An approval cannot be used (or created) for this call.

    Codes: ``approval_unknown``, ``approval_mismatch`` (another subject, tool, argument, task
    or policy revision), ``approval_pending``, ``approval_denied``, ``approval_used``,
    ``approval_expired``, ``approval_revoked``, ``approval_rate_limited``.
    """

    def __init__(self, message: str, *, code: str, approval_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.approval_id = approval_id


class ApproverRefused(SidecarError):
    """An approver may not decide this approval (self-approval, not a listed approver, not
    pending any more). ``code``: ``self_approval``, ``not_an_approver``, ``not_pending``,
    ``approval_unknown``, ``reason_required``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
