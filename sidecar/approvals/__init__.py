"""Step-up approvals: a human approves one exact call, once.

Errors::

    SidecarError
    ├── ApprovalError     an approval cannot be created or used for a call (``code``)
    └── ApproverRefused   an approver may not decide an approval (``code``)
"""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "STATES",
    "Approval",
    "ApprovalBroker",
    "ApprovalError",
    "ApprovalSettings",
    "ApprovalStore",
    "ApproverRefused",
    "Notifier",
    "approval_url",
    "request_digest",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.approvals.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "ApprovalBroker": "broker",
        "ApprovalError": "errors",
        "ApproverRefused": "errors",
        "STATES": "model",
        "Approval": "model",
        "request_digest": "model",
        "Notifier": "notify",
        "approval_url": "links",
        "ApprovalStore": "store",
        "ApprovalSettings": "settings",
    },
)
