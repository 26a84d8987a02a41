"""Step-up approvals: a human approves one exact call, once.

Errors::

    SidecarError
    ├── ApprovalError     an approval cannot be created or used for a call (``code``)
    └── ApproverRefused   an approver may not decide an approval (``code``)
"""

from __future__ import annotations

from sidecar.approvals.broker import ApprovalBroker
from sidecar.approvals.errors import ApprovalError, ApproverRefused
from sidecar.approvals.model import STATES, Approval, request_digest
from sidecar.approvals.notify import Notifier
from sidecar.approvals.store import ApprovalStore

__all__ = [
    "STATES",
    "Approval",
    "ApprovalBroker",
    "ApprovalError",
    "ApprovalStore",
    "ApproverRefused",
    "Notifier",
    "request_digest",
]
