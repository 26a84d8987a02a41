"""Step-up approvals: create, wait for, decide and use them.

Lives on the sidecar's event loop: the agent API parks a call in :meth:`ApprovalBroker.wait`
and the admin API's Approve/Deny wakes it, in the same process. The state itself is in SQLite
(:class:`ApprovalStore`), so a restart keeps it; waiting is what a restart loses, and the
agent then retries with the approval id.

Rules (who may approve is checked here; whether the call may then happen is policy's):
- one pending approval per exact request (digest): an identical retry waits on the same one;
- a subject holds at most ``max_pending_per_subject`` pending approvals and creates at most
  ``max_new_per_minute``: beyond that, ``approval_rate_limited``;
- nobody approves a request they made, delegated, or that acts for them as the end user
  (``self_approval``, :mod:`sidecar.approvals.selfapproval`); when the obligation names approvers,
  the approver must be one of them (directly or through ``approvals.groups``);
- an approval is used once, by a call with the same digest, before it expires; denial,
  expiry or the end of its task ends it; a timeout never approves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidecar.approvals.errors import ApprovalError, ApproverRefused
from sidecar.approvals.links import approval_url
from sidecar.approvals.model import USER_CLAIMS, Approval
from sidecar.approvals.selfapproval import self_approval
from sidecar.approvals.settings import ApprovalSettings
from sidecar.approvals.store import ApprovalStore
from sidecar.ids import new_decision_id

__all__ = ["ApprovalBroker"]

log = logging.getLogger(__name__)

_ENDED_CODES = {
    "denied": "approval_denied",
    "used": "approval_used",
    "expired": "approval_expired",
    "revoked": "approval_revoked",
}


# The event a watcher sees for an approval heard from another replica, by its state.
_EVENTS = {"pending": "created"}

# How far back announce_others looks again (another process's clock read before its insert).
ANNOUNCE_WINDOW_S = 5


class ApprovalBroker:
    def __init__(
        self,
        store: ApprovalStore,
        settings: ApprovalSettings,
        *,
        notify: Callable[[Approval], None] | None = None,
        record: Callable[[str, Approval, Mapping[str, Any]], None] | None = None,
        poll_s: float | None = None,
        announces: bool = False,
    ) -> None:
        self._store = store
        # With several worker processes an approver's decision may be taken in another one:
        # waiting calls then also re-read the store this often.
        self._poll_s = poll_s
        self._settings = settings
        self._notify = notify
        # Writes an audit record for an approver's decision (before it commits: a decision
        # that cannot be audited does not happen) and for an approval's expiry or revocation.
        self._record = record
        self._waiters: dict[str, set[asyncio.Event]] = collections.defaultdict(set)
        self._watchers: set[asyncio.Queue[tuple[str, Approval]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Approvals already announced to watchers (id -> created_ns), for announce_others.
        # Worker 0 of several on SQLite: it announces the others' approvals (announce_others).
        self._announces = announces
        self._announced: dict[str, int] = {}
        self._announced_after = time.time_ns()

    @property
    def settings(self) -> ApprovalSettings:
        """The ``approvals`` section (what links to an approval are built from)."""
        return self._settings

    def url(self, approval_id: str) -> str:
        """The console URL of ``approval_id``, ``""`` without ``approvals.console_url``."""
        return approval_url(self._settings, approval_id)

    # --- the agent side (the pipeline) -----------------------------------------------------

    def request(
        self,
        *,
        digest: str,
        subject: str,
        delegation: Sequence[str],
        action: Mapping[str, str],
        arguments: Mapping[str, Any],
        task_id: str,
        reasons: Sequence[str],
        approvers: Sequence[str],
        ttl_s: int,
        policy_revision: str,
        decision_id: str,
        user: Mapping[str, Any] | None = None,
    ) -> Approval:
        """The pending approval for this exact request: an existing one, or a new one.
        Atomic across threads and replicas: identical concurrent calls share one approval.
        ``user``: the verified end user the call acts for (``USER_CLAIMS`` of it: ``sub``,
        ``iss``, ``email``, ``preferred_username``), who may then not decide it."""
        now_ns = time.time_ns()
        ttl = min(ttl_s, self._settings.max_ttl_s)
        approval, created = self._store.open_once(
            Approval(
                id="ap-" + new_decision_id(now_ns),
                state="pending",
                digest=digest,
                subject=subject,
                delegation=tuple(delegation),
                action=dict(action),
                arguments=dict(arguments),
                task_id=task_id,
                reasons=tuple(reasons),
                approvers=tuple(approvers),
                policy_revision=policy_revision,
                decision_id=decision_id,
                created_at_ns=now_ns,
                expires_at_ns=now_ns + ttl * 1_000_000_000,
                user={k: str(user[k]) for k in USER_CLAIMS if user.get(k)} if user else {},
            ),
            lambda recent, pending: self._check_rate(subject, recent, pending),
        )
        if not created:
            return approval
        self._remember(approval)
        log.info(
            "approval pending",
            extra={"approval_id": approval.id, "decision_id": decision_id, "subject": subject},
        )
        self._publish("created", approval)
        if self._notify is not None:
            self._notify(approval)
        return approval

    def _check_rate(self, subject: str, recent: int, pending: int) -> None:
        """The step-up flood limits, on counts read from the store (every replica's)."""
        settings = self._settings
        if recent >= settings.max_new_per_minute:
            raise ApprovalError(
                f"{subject} asked for {recent} approvals in the last minute; the limit is "
                f"{settings.max_new_per_minute} (approvals.max_new_per_minute)",
                code="approval_rate_limited",
            )
        if pending >= settings.max_pending_per_subject:
            raise ApprovalError(
                f"{subject} already has {pending} pending approvals; the limit is "
                f"{settings.max_pending_per_subject} (approvals.max_pending_per_subject)",
                code="approval_rate_limited",
            )

    async def wait(self, approval_id: str, timeout_s: float) -> Approval | None:
        """Wait until the approval is no longer pending, it expires, or ``timeout_s`` passes;
        return it as it then is (still ``pending`` when the wait timed out)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            # Listening before reading: a decision made while the state is read still wakes
            # this wait (read first, and it could land in between and be missed).
            event = asyncio.Event()
            self._waiters[approval_id].add(event)
            try:
                # Off the event loop: a locked state database stalls this call, not the others.
                approval = await asyncio.to_thread(self._store.get, approval_id)
                if approval is None or approval.state != "pending":
                    return approval
                until_expiry = (approval.expires_at_ns - time.time_ns()) / 1e9
                if until_expiry <= 0:
                    await asyncio.to_thread(self.sweep)
                    continue
                remaining = min(end - loop.time(), until_expiry)
                if remaining <= 0:
                    return approval
                if self._poll_s is not None:
                    remaining = min(remaining, self._poll_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
            finally:
                self._waiters[approval_id].discard(event)
                if not self._waiters[approval_id]:
                    del self._waiters[approval_id]

    def claim(self, approval_id: str, digest: str, used_by: str) -> Approval:
        """Use an approved approval for the call with ``digest``: once, atomically."""
        now_ns = time.time_ns()

        def check(approval: Approval) -> None:
            if approval.digest != digest:
                raise ApprovalError(
                    f"approval {approval_id} was granted for another request (subject, tool, "
                    "arguments, task or policy revision differ)",
                    code="approval_mismatch",
                    approval_id=approval_id,
                )
            if approval.state in ("pending", "approved") and approval.expires_at_ns <= now_ns:
                raise ApprovalError(
                    f"approval {approval_id} expired",
                    code="approval_expired",
                    approval_id=approval_id,
                )
            if approval.state == "pending":
                raise ApprovalError(
                    f"approval {approval_id} is still pending",
                    code="approval_pending",
                    approval_id=approval_id,
                )
            if approval.state != "approved":
                raise ApprovalError(
                    f"approval {approval_id} is {approval.state}",
                    code=_ENDED_CODES[approval.state],
                    approval_id=approval_id,
                )

        def use(approval: Approval) -> None:
            approval.state = "used"
            approval.used_at_ns = now_ns
            approval.used_by = used_by

        try:
            approval = self._store.transition(approval_id, check, use)
        except ApprovalError as exc:
            if exc.code == "approval_expired":
                self.sweep()
            raise
        self._publish("used", approval)
        return approval

    # --- the approver side (the admin API) ---------------------------------------------------

    def get(self, approval_id: str) -> Approval | None:
        return self._store.get(approval_id)

    def pending_count(self) -> int:
        """Approvals waiting for a human now (the ``agent_sidecar_pending_approvals`` gauge)."""
        return self._store.count_all_pending(time.time_ns())

    def oldest_pending_age_s(self) -> float:
        """Seconds the oldest waiting approval has waited, 0 when none (a /metrics gauge)."""
        now_ns = time.time_ns()
        oldest = self._store.oldest_pending_created_ns(now_ns)
        return 0.0 if oldest is None else max(0.0, (now_ns - oldest) / 1e9)

    def list(self, states: Sequence[str] = (), limit: int = 100) -> list[Approval]:
        self.sweep()
        return self._store.list(states, limit)

    def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        approver: str,
        reason: str,
        groups: Sequence[str] = (),
        via: str = "",
    ) -> Approval:
        """Approve or deny a pending approval as ``approver``, with a reason. ``groups``:
        the approver's groups as an authenticating proxy vouched for them (the console);
        ``via``: where the decision was taken, for the audit record."""
        if not reason.strip():
            raise ApproverRefused("a reason is required", code="reason_required")
        self.sweep()
        now_ns = time.time_ns()

        def check(approval: Approval) -> None:
            party = self_approval(approver, approval)
            if party is not None:
                raise ApproverRefused(
                    f"{approver} {party} and cannot decide it", code="self_approval"
                )
            if approval.approvers and not self._may_approve(approver, approval.approvers, groups):
                raise ApproverRefused(
                    f"{approver} is not among this approval's approvers "
                    f"({', '.join(approval.approvers)})",
                    code="not_an_approver",
                )
            if approval.state != "pending":
                raise ApproverRefused(
                    f"approval {approval_id} is {approval.state}, not pending", code="not_pending"
                )

        def change(approval: Approval) -> None:
            approval.state = "approved" if approve else "denied"
            approval.decided_by = approver
            approval.decided_at_ns = now_ns
            approval.decision_reason = reason

        def audit(approval: Approval) -> None:
            if self._record is not None:
                detail = {"actor": approver} | ({"via": via} if via else {})
                self._record(approval.state, approval, detail)

        try:
            approval = self._store.transition(approval_id, check, change, audit)
        except ApprovalError as exc:  # unknown id
            raise ApproverRefused(str(exc), code=exc.code) from exc
        log.info(
            "approval decided",
            extra={"approval_id": approval_id, "state": approval.state, "approver": approver},
        )
        self._publish(approval.state, approval)
        return approval

    def _may_approve(
        self, approver: str, required: Sequence[str], groups: Sequence[str] = ()
    ) -> bool:
        for entry in required:
            if entry == approver:
                return True
            group = entry.removeprefix("group:")
            if entry.startswith("group:") and (
                approver in self._settings.groups.get(group, ()) or group in groups
            ):
                return True
        return False

    def announce_others(self) -> list[Approval]:
        """Announce to this process's watchers the pending approvals other worker processes
        created since the last look (``server.workers``: the approvals API, and its watchers,
        are worker 0's). Blocking (reads the store): call it off the event loop."""
        window_ns = ANNOUNCE_WINDOW_S * 1_000_000_000
        found = self._store.pending_created_after(self._announced_after - window_ns)
        fresh = [a for a in found if a.id not in self._announced]
        for approval in fresh:
            self._announced[approval.id] = approval.created_at_ns
            self._publish("created", approval)
        if found:  # clocks of other processes may lag: look back a window, dedupe by id
            self._announced_after = max(self._announced_after, found[-1].created_at_ns)
        self._forget_before(self._announced_after - 2 * window_ns)
        return fresh

    def _remember(self, approval: Approval) -> None:
        """This process announced ``approval`` itself: kept only where ``announce_others``
        runs (and forgets them), or the record would grow with every approval."""
        if self._announces:
            self._announced[approval.id] = approval.created_at_ns

    def _forget_before(self, horizon_ns: int) -> None:
        for approval_id in [k for k, v in self._announced.items() if v < horizon_ns]:
            del self._announced[approval_id]

    def subscribe(self) -> asyncio.Queue[tuple[str, Approval]]:
        queue: asyncio.Queue[tuple[str, Approval]] = asyncio.Queue(maxsize=1000)
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, Approval]]) -> None:
        self._watchers.discard(queue)

    # --- ends: expiry and task revocation ------------------------------------------------

    def sweep(self) -> list[Approval]:
        """Expire every approval whose time has passed."""
        expired = self._store.expire_due(time.time_ns())
        for approval in expired:
            self._after_end("expired", approval, {})
        return expired

    def revoke_task(self, task_id: str) -> list[Approval]:
        revoked = self._store.revoke_task(task_id)
        for approval in revoked:
            self._after_end("revoked", approval, {"task_id": task_id})
        return revoked

    def _after_end(self, event: str, approval: Approval, detail: Mapping[str, Any]) -> None:
        self._publish(event, approval)
        if self._record is not None:
            try:
                self._record(event, approval, detail)
            except Exception:  # the end already happened; it cannot be undone for the log
                log.exception("cannot audit an approval's end", extra={"approval_id": approval.id})

    # --- another replica's changes (the shared store's change feed) ---------------------------

    def heard(self, approval_id: str) -> None:
        """Another replica changed ``approval_id``: wake this replica's waiters and watchers
        with it as it now is. Blocking (reads the store): called from the feed thread."""
        approval = self._store.get(approval_id)
        if approval is not None:
            self.publish_change(approval)

    def publish_change(self, approval: Approval) -> None:
        """Tell waiters and watchers that ``approval`` changed elsewhere (it is as read)."""
        self._publish(_EVENTS.get(approval.state, approval.state), approval)

    def wake_all(self) -> None:
        """Announcements may have been lost: every waiter re-reads its approval."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_here)

    def _wake_here(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop waiters and watchers live on: store work may run in threads (a locked
        database must not stall the loop), and their news is handed to this loop."""
        self._loop = loop

    def _publish(self, event: str, approval: Approval) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._publish_here, event, approval)
                return
        self._publish_here(event, approval)

    def _publish_here(self, event: str, approval: Approval) -> None:
        for waiter in self._waiters.get(approval.id, ()):
            waiter.set()
        for queue in list(self._watchers):
            try:
                queue.put_nowait((event, approval))
            except asyncio.QueueFull:  # a watcher that stopped reading is dropped
                self._watchers.discard(queue)
