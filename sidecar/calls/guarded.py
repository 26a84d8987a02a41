"""The guarded path every kind of call takes: its deadline, attestation (the workload, the
user, the delegation chain, the task), the policy decision (with the shadow policy), the
write-ahead intent record and exactly one audit record however the call ends.

Python here only gathers facts, asks policy and enforces the answer; every "may it happen"
is in Rego. Anything the path cannot establish or understand ends the call with a stable code
(``sidecar.outcomes``), and every call, whatever its end, leaves exactly one audit record,
written before the answer is returned. If that record cannot be written, the answer is
withheld (``audit_unavailable``). The kinds of call (sidecar/calls/tools.py, models.py,
tasks.py) supply their action and their relay; step_up.py holds the approval flow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.approvals import ApprovalBroker, request_digest
from sidecar.audit import AuditError, AuditSink, CallRecord
from sidecar.budgets import Budgets
from sidecar.calls.common import (
    NOT_IN_INTENT,
    CallResult,
    Decided,
    Facts,
    Stop,
    answer_margin,
    off_loop,
)
from sidecar.config import Settings
from sidecar.identity import (
    Attestor,
    CallContext,
    IdentityError,
    Subject,
    UpstreamCredentials,
    WorkloadIdentity,
)
from sidecar.identity.delegation import verify_chain
from sidecar.ids import new_decision_id
from sidecar.outcomes import status_for
from sidecar.policy import (
    ApprovalInfo,
    Decision,
    DecisionError,
    PolicyEngine,
    build_input,
    parse_decision,
)
from sidecar.policy.decision import ENGINE_FAILURES
from sidecar.relay import (
    HttpRelay,
)
from sidecar.relay.models import ModelRelay
from sidecar.state import StateError
from sidecar.tasks import Task, TaskError, TaskRegistry
from sidecar.tracing import Tracer
from sidecar.users import TokenExchanger, User, UserTokenError, UserVerifier

__all__ = ["GuardedPath"]

log = logging.getLogger("sidecar.pipeline")


class GuardedPath:
    """Every call: deadline, attestation, decision, audit. The base of Mediator."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: PolicyEngine,
        attestor: Attestor,
        relay: HttpRelay,
        audit: AuditSink,
        tasks: TaskRegistry,
        approvals: ApprovalBroker,
        budgets: Budgets,
        models: ModelRelay,
        credentials: UpstreamCredentials | None = None,
        shadow: PolicyEngine | None = None,
        identity: WorkloadIdentity | None = None,
        users: UserVerifier | None = None,
        exchanger: TokenExchanger | None = None,
    ) -> None:
        self._settings = settings
        self._users = users or UserVerifier(settings.users)
        self._exchanger = exchanger or TokenExchanger(settings.targets, identity)
        self._tasks = tasks
        self._approvals = approvals
        self._budgets = budgets
        self._models = models
        # Verifies delegation chains (JWT bundles); None: no Workload API, chains refused.
        self._identity = identity
        self._shadow = shadow
        self._fail_open = frozenset(settings.policy.fail_open_on_engine_error)
        # Counts for operators (exported by sidecar.metrics).
        self.stats: Counter[str] = Counter()
        self.metrics: Any = None
        self._tracer = Tracer()
        self._credentials = credentials or UpstreamCredentials(settings.targets, None)
        self._engine = engine
        self._attestor = attestor
        self._relay = relay
        self._audit = audit
        self._relay_slots = asyncio.Semaphore(settings.relay.max_concurrency)
        # Per target (and provider): a slow upstream holds at most relay.per_target slots.
        self._target_slots: dict[str, asyncio.Semaphore] = collections.defaultdict(
            lambda: asyncio.Semaphore(settings.relay.per_target)
        )

    async def reject(self, rpc: str, code: str, message: str) -> CallResult:
        """A request refused before it could be decoded (too large, malformed): audited too."""
        record = CallRecord(decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns())
        result = CallResult(record.decision_id, code, status_for(code), message)
        return await self._finish(record, result, time.perf_counter())

    async def _guarded(
        self,
        rpc: str,
        time_remaining: float | None,
        run: Callable[[CallRecord, float], Awaitable[CallResult]],
    ) -> CallResult:
        """Run one call within its deadline; every way it can end becomes a result with a
        stable code, and exactly one audit record."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + time_remaining - answer_margin(time_remaining)
            if time_remaining is not None
            else math.inf
        )
        record = CallRecord(decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns())
        try:
            result = await run(record, deadline)
        except Stop as stop:
            result = CallResult(
                record.decision_id, stop.code, status_for(stop.code), str(stop), **stop.kwargs
            )
        except StateError as exc:
            log.error("state database failed", extra={"decision_id": record.decision_id})
            result = CallResult(
                record.decision_id, "state_unavailable", status_for("state_unavailable"), str(exc)
            )
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return await self._finish(record, result, started)

    async def _decide_call(
        self,
        record: CallRecord,
        facts: Facts,
        *,
        acting: bool,
        approval_id: str,
        no_wait: bool,
        deadline: float,
        trace: Any,
    ) -> tuple[Decided, dict[str, Any]]:
        """Ask policy; on step_up (for a call that would act, not a Check) record a pending
        approval, wait for it (or answer with its id), and decide again with the approval."""

        def digest(revision: str) -> str:
            assert record.action is not None
            return request_digest(
                subject=facts.subject.spiffe_id,
                delegation=facts.chain,
                action=record.action,
                arguments=facts.arguments,
                task_id=facts.task_id,
                policy_revision=revision,
                user=facts.user.to_record() if facts.user is not None else None,
            )

        def policy_input(approval: ApprovalInfo | None) -> dict[str, Any]:
            task = facts.task
            return build_input(
                request_id=record.decision_id,
                time_ns=record.time_ns,
                subject=facts.subject,
                action=facts.action,
                task=task.info(record.time_ns) if task is not None else None,
                delegation_chain=facts.chain,
                approval=approval,
                user=facts.user,
            )

        approval: ApprovalInfo | None = None
        if acting and approval_id:
            approval = await self._use_approval(
                record,
                approval_id,
                digest(self._engine.revision),
                no_wait=no_wait,
                deadline=deadline,
            )
        input_doc = policy_input(approval)
        name = facts.action.name
        decided = await self._decide_recorded(record, input_doc, deadline, name, trace)
        if approval is not None:
            self._check_revision(record, decided)
        if decided.decision.effect == "step_up" and acting and approval is None:
            pending = await self._request_approval(record, decided, digest(decided.revision), facts)
            if no_wait:
                raise self._step_up_stop(decided, pending.id, "the agent asked not to wait")
            await self._await_approval(record, pending.id, decided, deadline)
            approval = await self._claim(record, pending.id, digest(decided.revision))
            input_doc = policy_input(approval)
            decided = await self._decide_recorded(record, input_doc, deadline, name, trace)
            self._check_revision(record, decided)
        return decided, input_doc

    def _attest(self, record: CallRecord, context: CallContext) -> Subject:
        try:
            subject = self._attestor.attest(context)
        except IdentityError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.subject = {"spiffe_id": subject.spiffe_id, "attestation": subject.attestation}
        if subject.expires_at is not None:
            record.subject["expires_at"] = subject.expires_at
        return subject

    async def _verify_user(self, record: CallRecord, context: CallContext) -> User | None:
        """The user the agent acts for, from its user token (``users.header``); None without
        one. A token that does not verify stops the call with its ``user_token_*`` code."""
        header = self._settings.users.header
        values = [v for k, v in context.metadata if k.lower() == header]
        if not values:
            return None
        if len(values) > 1 or not isinstance(values[0], str):
            raise Stop("user_token_malformed", f"one {header} value, as text, is allowed")
        if not self._users.enabled:
            raise Stop(
                "user_token_unexpected",
                f"a {header} was sent, but no user token issuer is configured (users.issuers)",
            )
        try:
            user = await self._users.verify(values[0])
        except UserTokenError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.user = user.to_record()
        return user

    def _verify_delegation(self, tokens: tuple[str, ...], subject: Subject) -> list[str]:
        if not tokens:
            return []
        if self._identity is None:
            raise Stop(
                "delegation_invalid",
                "this sidecar has no Workload API (JWT bundles) to verify a delegation chain with",
            )
        try:
            bundles = self._identity.jwt_bundles()
            trusted = self._settings.identity.trust_domains or (
                self._identity.snapshot().trust_domain,
            )
            return verify_chain(
                tokens,
                caller=subject.spiffe_id,
                bundles=bundles,
                trust_domains=trusted,
                max_links=self._settings.delegation.max_links,
            )
        except IdentityError as exc:
            raise Stop("delegation_invalid", str(exc)) from exc

    async def _use_task(
        self,
        record: CallRecord,
        task_id: str,
        subject: Subject,
        chain: list[str],
        *,
        count: bool,
    ) -> Task | None:
        if not task_id:
            return None
        record.task = {"id": task_id}
        try:
            task = await off_loop(self._tasks.use, task_id, subject.spiffe_id, chain, count=count)
        except TaskError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.task = {
            "id": task.id,
            "intent": task.intent,
            "owner": task.owner,
            "calls": task.calls,
            "tokens": task.tokens,
        }
        return task

    async def _decide_recorded(
        self,
        record: CallRecord,
        input_doc: dict[str, Any],
        deadline: float,
        tool: str,
        trace: Any,
    ) -> Decided:
        """Ask policy (and the shadow policy) and put the answer on record."""
        t0 = time.perf_counter()
        with self._tracer.span("decide", trace, tool=tool):
            if self._shadow is None:  # (no tasks to gather: the common case, on every call)
                decided, shadow = await self._decide(self._engine, input_doc, deadline, tool), None
            else:
                decided, shadow = await asyncio.gather(
                    self._decide(self._engine, input_doc, deadline, tool),
                    self._shadow_decide(input_doc, deadline),
                )
        decision = decided.decision
        record.latency_ms["decide"] = (
            record.latency_ms.get("decide", 0.0) + (time.perf_counter() - t0) * 1000
        )
        record.policy = {
            "engine": self._engine.name,
            "revision": decided.revision,
            "query": self._settings.policy.query,
        }
        if decided.engine_decision_id:
            record.policy["engine_decision_id"] = decided.engine_decision_id
        record.decision = decision.to_dict()
        if shadow is not None:
            record.shadow = shadow.decision.to_dict() | {"revision": shadow.revision}
            self.stats["shadow_evaluations"] += 1
            if shadow.decision.effect != decision.effect:
                self.stats["shadow_disagreements"] += 1
        log.info(
            "decision",
            extra={
                "decision_id": record.decision_id,
                "tool": tool,
                "effect": decision.effect,
                "code": decision.code,
            },
        )
        return decided

    def audit_alive(self) -> bool:
        return self._audit.alive

    async def _before_relay(self, record: CallRecord, common: dict[str, Any]) -> None:
        """Nothing is relayed unaudited: strict writes the intent first; best_effort needs a
        live writer."""
        if self._audit.strict:
            await self._write_intent(record, common)
        elif not self._audit.alive:
            raise Stop("audit_unavailable", "the audit writer has stopped", **common)

    async def _write_intent(self, record: CallRecord, common: dict[str, Any]) -> None:
        """Write-ahead: the call is on record before anything reaches the upstream."""
        # What names the call; the policy input and shadow come with the call record.
        intent = {k: v for k, v in record.to_dict().items() if k not in NOT_IN_INTENT}
        intent["type"] = "intent"
        intent["outcome"] = {
            "status": "PENDING",
            "code": "relaying",
            "message": "",
            "relayed": False,
        }
        try:
            await self._audit.commit(intent)
        except AuditError as exc:
            raise Stop(
                "audit_unavailable", f"the audit record could not be written: {exc}", **common
            ) from exc

    async def _decide(
        self, engine: PolicyEngine, input_doc: dict[str, Any], deadline: float, tool: str
    ) -> Decided:
        """Ask policy; any failure is a deny with its code, never an exception. A read tool in
        ``policy.fail_open_on_engine_error`` is allowed when the *engine* fails (counted,
        audited as ``fail_open``); never when policy answered."""
        loop = asyncio.get_running_loop()
        timeout = min(self._settings.policy.timeout_ms / 1000, deadline - loop.time())
        revision = engine.revision
        engine_decision_id: str | None = None
        try:
            if timeout <= 0:
                raise DecisionError("policy_timeout", "no time left in the call's deadline")
            result = await engine.evaluate(input_doc, timeout_s=timeout)
            revision = result.revision
            # Kept also when the result is refused below (undefined, malformed): OPA made that
            # decision, and its decision log must join this record.
            engine_decision_id = result.engine_decision_id
            decision = parse_decision(result.value, defined=result.defined)
            return Decided(decision, revision, engine_decision_id)
        except DecisionError as exc:
            log.warning(
                "policy failed closed",
                extra={"decision_id": input_doc["request_id"], "code": exc.code, "error": str(exc)},
            )
            if engine is self._engine and exc.code in ENGINE_FAILURES and tool in self._fail_open:
                self.stats["fail_open"] += 1
                log.warning(
                    "FAIL OPEN: engine failure on a read tool configured to fail open",
                    extra={"decision_id": input_doc["request_id"], "tool": tool, "code": exc.code},
                )
                return Decided(
                    Decision(
                        effect="allow",
                        reasons=(f"fail-open ({exc.code}): {exc}",),
                        code="fail_open",
                    ),
                    revision,
                    None,
                )
            return Decided(Decision.fail_closed(exc), revision, engine_decision_id)

    async def _shadow_decide(self, input_doc: dict[str, Any], deadline: float) -> Decided | None:
        if self._shadow is None:
            return None
        return await self._decide(self._shadow, input_doc, deadline, tool="")

    async def _finish(self, record: CallRecord, result: CallResult, started: float) -> CallResult:
        record.status = result.status.name
        record.code = result.code
        record.message = result.message
        record.latency_ms["total"] = (time.perf_counter() - started) * 1000
        doc = record.to_dict()
        try:
            await self._audit.commit(doc)
        except AuditError as exc:
            log.error("audit write failed", extra={"decision_id": record.decision_id})
            self._observe(doc | {"outcome": doc["outcome"] | {"code": "audit_unavailable"}})
            return CallResult(
                record.decision_id,
                "audit_unavailable",
                status_for("audit_unavailable"),
                f"the audit record could not be written: {exc}",
                decision=result.decision,
                policy_revision=result.policy_revision,
                approval_id=result.approval_id,
            )
        self._observe(doc)
        return result

    def _observe(self, doc: dict[str, Any]) -> None:
        """Metrics, after the audit record: they can never change or lose a call."""
        if self.metrics is None:
            return
        try:
            self.metrics.observe(doc)
        except Exception:
            log.exception("metrics update failed", extra={"decision_id": doc["decision_id"]})

    async def aclose(self) -> None:
        """Close the sessions to user token issuers and authorization servers."""
        await self._users.aclose()
        await self._exchanger.aclose()

    def close(self) -> None:
        """Nothing of its own to release: relays and engines are closed by their owner."""
