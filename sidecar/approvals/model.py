"""An approval, and the digest that binds it to one exact request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["STATES", "USER_CLAIMS", "Approval", "audit_record", "request_digest"]

# What an approval keeps of the end user a call acts for: who (each name their token gives:
# the console names approvers by e-mail, most IdPs issue an opaque ``sub``) and from where.
USER_CLAIMS = ("sub", "iss", "email", "preferred_username")

# pending -> approved -> used; pending -> denied | expired | revoked; approved -> expired | revoked
STATES = ("pending", "approved", "denied", "used", "expired", "revoked")


def request_digest(
    *,
    subject: str,
    delegation: Sequence[str],
    action: Mapping[str, str],
    arguments: Mapping[str, Any],
    task_id: str,
    policy_revision: str,
    user: Mapping[str, Any] | None = None,
) -> str:
    """sha256 over the canonical JSON of everything an approval is bound to.

    Canonical: sorted keys, no whitespace, UTF-8, numbers as parsed (``100`` and ``100.0``
    are different requests). Any change of subject, delegation chain, tool, operation,
    target, argument, task, user (an approval for one person's call never serves another's)
    or policy revision gives another digest.
    """
    doc = {
        "subject": subject,
        "delegation": list(delegation),
        "action": {k: action[k] for k in ("kind", "name", "operation", "target")},
        "arguments": arguments,
        "task_id": task_id,
        "policy_revision": policy_revision,
    }
    if user is not None:
        doc["user"] = {"sub": user["sub"], "iss": user["iss"]}
    canonical = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Approval:
    """A request for a human decision about one exact call.

    ``arguments`` is the call's arguments as the decision's ``log`` obligation lets them be
    shown (``payload_view``): approvers and notifications see no more than the audit log.
    """

    id: str
    state: str
    digest: str
    subject: str
    action: dict[str, str]
    arguments: dict[str, Any]
    task_id: str
    reasons: tuple[str, ...]
    approvers: tuple[str, ...]
    policy_revision: str
    decision_id: str
    created_at_ns: int
    expires_at_ns: int
    delegation: tuple[str, ...] = ()
    decided_by: str = ""
    decided_at_ns: int = 0
    decision_reason: str = ""
    used_at_ns: int = 0
    used_by: str = ""
    # The verified end user the agent acted for (``USER_CLAIMS``: ``sub``, ``iss`` and, when
    # the token has them, ``email`` and ``preferred_username``), empty without one: that
    # person, by any of those names, may not decide the approval (self-approval).
    user: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"approval state {self.state!r} is not one of {STATES}")

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["reasons"] = list(self.reasons)
        doc["approvers"] = list(self.approvers)
        doc["delegation"] = list(self.delegation)
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Approval:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        for key in ("reasons", "approvers", "delegation"):
            values[key] = tuple(values.get(key, ()))
        user = values.get("user")
        values["user"] = (
            {str(k): str(v) for k, v in user.items() if k in USER_CLAIMS}
            if isinstance(user, Mapping)
            else {}
        )
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """What an audit record says about the approval (no argument values)."""
        out: dict[str, Any] = {"id": self.id, "state": self.state, "digest": self.digest}
        if self.decided_by:
            out |= {
                "decided_by": self.decided_by,
                "decided_at_ns": self.decided_at_ns,
                "reason": self.decision_reason,
            }
        return out


def audit_record(
    event: str,
    approval: Approval | None,
    detail: Mapping[str, Any],
    *,
    approval_id: str = "",
) -> dict[str, Any]:
    """The audit line for an approver's decision (or refused attempt) and an approval's end.
    ``decision_id`` is the call that asked for the approval, so one query finds both."""
    now = time.time_ns()
    doc: dict[str, Any] = {
        "record_version": 1,
        "type": "approval",
        "time": datetime.fromtimestamp(now / 1e9, UTC).isoformat(),
        "time_ns": now,
        "event": event,
        "approval_id": approval.id if approval else approval_id,
        "decision_id": approval.decision_id if approval else None,
    }
    if approval is not None:
        doc["approval"] = approval.summary() | {
            "subject": approval.subject,
            "delegation": list(approval.delegation),
            "action": approval.action,
            "task_id": approval.task_id,
            "expires_at_ns": approval.expires_at_ns,
        }
        if approval.user:
            doc["approval"]["user"] = dict(approval.user)
    doc.update(detail)
    return doc
