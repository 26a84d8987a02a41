"""Step-up: a decision of ``step_up`` becomes a pending approval bound to this exact call;
the call waits for it within its deadline (or answers with its id), and a retry carrying a
granted approval is decided again with ``input.approval``, once.

Only the guarded path's ``authorize`` step uses it: no adapter handles approvals itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sidecar.approvals import Approval, ApprovalBroker, ApprovalError
from sidecar.approvals.links import InvalidApprovalId
from sidecar.audit import CallRecord, payload_view
from sidecar.calls.common import Decided, Facts, Stop, off_loop
from sidecar.policy import ApprovalInfo

__all__ = ["StepUp"]

log = logging.getLogger("sidecar.pipeline")


class StepUp:
    """Approvals for step_up decisions, on the broker every path shares."""

    def __init__(self, approvals: ApprovalBroker, *, max_ttl_s: int) -> None:
        self._approvals = approvals
        self._max_ttl_s = max_ttl_s

    async def request(
        self, record: CallRecord, decided: Decided, digest: str, facts: Facts
    ) -> Approval:
        decision = decided.decision
        obligation = decision.obligations.approval
        assert record.action is not None
        try:
            pending = await off_loop(
                self._approvals.request,
                digest=digest,
                subject=facts.subject.spiffe_id,
                delegation=facts.chain,
                action={k: record.action[k] for k in ("kind", "name", "operation", "target")},
                arguments=payload_view(facts.arguments, decision.obligations.log),
                task_id=facts.task_id,
                reasons=decision.reasons,
                approvers=obligation.approvers if obligation else (),
                ttl_s=obligation.ttl_s if obligation else self._max_ttl_s,
                policy_revision=decided.revision,
                decision_id=record.decision_id,
                user=facts.user.to_record() if facts.user is not None else None,
            )
        except ApprovalError as exc:
            raise Stop(exc.code, str(exc), **self._common(decided)) from exc
        record.approval = {"id": pending.id, "state": "pending", "digest": pending.digest}
        return pending

    async def wait(
        self, record: CallRecord, approval_id: str, decided: Decided, deadline: float
    ) -> Approval:
        """Park the call until the approval is decided, it expires or the deadline comes."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            approval = await self._approvals.wait(approval_id, deadline - loop.time())
        finally:
            record.latency_ms["approval_wait"] = (time.perf_counter() - t0) * 1000
        assert approval is not None
        record.approval = approval.summary()
        if approval.state == "pending":
            raise self.stop(
                decided, approval_id, "the call's deadline came before an approver decided"
            )
        return approval

    async def use(
        self,
        record: CallRecord,
        approval_id: str,
        digest: str,
        *,
        no_wait: bool | str,
        deadline: float,
    ) -> ApprovalInfo:
        """A retry with an approval id: wait for it if still pending, then use it."""
        current = await off_loop(self._approvals.get, approval_id)
        if current is not None and current.state == "pending" and current.digest == digest:
            record.approval = current.summary()
            if no_wait:
                raise Stop(
                    "approval_required",
                    f"approval {approval_id} is still pending",
                    **self.link(approval_id),
                )
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            current = await self._approvals.wait(approval_id, deadline - loop.time())
            record.latency_ms["approval_wait"] = (time.perf_counter() - t0) * 1000
            if current is not None and current.state == "pending":
                record.approval = current.summary()
                raise Stop(
                    "approval_required",
                    f"approval {approval_id} is still pending at the call's deadline",
                    **self.link(approval_id),
                )
        return await self.claim(record, approval_id, digest)

    async def claim(self, record: CallRecord, approval_id: str, digest: str) -> ApprovalInfo:
        try:
            approval = await off_loop(
                self._approvals.claim, approval_id, digest, used_by=record.decision_id
            )
        except ApprovalError as exc:
            current = await off_loop(self._approvals.get, approval_id)
            known = current.summary() if current is not None else {"id": approval_id}
            record.approval = known | {"refused": exc.code}
            code = "approval_required" if exc.code == "approval_pending" else exc.code
            link = self.link(approval_id) if code == "approval_required" else {}
            raise Stop(code, str(exc), **({"approval_id": approval_id} | link)) from exc
        record.approval = approval.summary()
        return ApprovalInfo(
            id=approval.id,
            approved_by=approval.decided_by,
            approved_at_ns=approval.decided_at_ns,
            reason=approval.decision_reason,
        )

    async def check_revision(self, record: CallRecord, decided: Decided) -> None:
        """An approval is for the policy revision that asked for it; the re-decision must be
        by the same one (a reload in between makes the approval useless, never broader)."""
        used = (
            await off_loop(self._approvals.get, record.approval["id"]) if record.approval else None
        )
        if used is not None and used.policy_revision != decided.revision:
            raise Stop(
                "approval_mismatch",
                f"approval {used.id} was granted under policy revision {used.policy_revision}; "
                f"the policy is now {decided.revision}",
                **self._common(decided),
            )

    @staticmethod
    def no_wait_why(no_wait: bool | str) -> str:
        """Why a stepped-up call answered at once: the agent's own no_wait (True), or the
        sidecar's reason (a text: its setting decided it)."""
        return no_wait if isinstance(no_wait, str) else "the agent asked not to wait"

    def stop(self, decided: Decided, approval_id: str, why: str) -> Stop:
        reasons = "; ".join(decided.decision.reasons) or "approval required"
        return Stop(
            "approval_required",
            f"{reasons} ({why}; approval {approval_id})",
            **self.link(approval_id),
            **self._common(decided),
        )

    def link(self, approval_id: str) -> dict[str, str]:
        """The id and, with ``approvals.console_url``, the page an approver opens for it.
        An id that is not an approval's (a retry's own) gets no link, never a broken one."""
        try:
            url = self._approvals.url(approval_id)
        except InvalidApprovalId:
            url = ""
        return {"approval_id": approval_id, "approval_url": url}

    @staticmethod
    def _common(decided: Decided) -> dict[str, Any]:
        return {"decision": decided.decision, "policy_revision": decided.revision}
