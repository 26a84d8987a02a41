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
from sidecar.audit import AuditError, AuditSink, CallRecord, payload_view
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
from sidecar.policy import ApprovalInfo, PolicyEngine, build_input
from sidecar.policy.decision import CredentialObligation
from sidecar.relay import HttpRelay
from sidecar.relay.models import ModelRelay
from sidecar.relay.scrub import Scrubber
from sidecar.state import StateError
from sidecar.tasks import Task, TaskError, TaskRegistry
from sidecar.tracing import TraceContext, Tracer, trace_context
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
        # List-phase decisions (MCP lists), keyed by policy revision, caller and entry.
        self._list_decisions: dict[Any, str] = {}
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
        except StateError as exc:  # the details for operators; the agent gets the code
            log.error(
                "state database failed",
                extra={"decision_id": record.decision_id, "error": str(exc)},
            )
            result = CallResult(
                record.decision_id,
                "state_unavailable",
                status_for("state_unavailable"),
                exc.agent_message,
            )
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return await self._finish(record, result, started)

    # --- the steps every kind of call takes, in this order ---------------------------------

    def _begin(self, record: CallRecord, context: CallContext, intent: str) -> TraceContext:
        """Join the caller's trace (or start one) and note what the call says it is for."""
        trace = trace_context(context.metadata)
        record.trace_id = trace.trace_id
        record.intent = intent
        return trace

    async def _establish(
        self,
        record: CallRecord,
        context: CallContext,
        trace: TraceContext,
        *,
        delegation_chain: tuple[str, ...],
        task_id: str,
        count: bool,
    ) -> tuple[Subject, list[str], User | None, Task | None]:
        """Who is calling (the workload, its verified delegators, the user it acts for) and
        under which task; ``count`` counts the call against the task."""
        with self._tracer.span("attest", trace):
            subject = self._attest(record, context)
            chain = self._verify_delegation(delegation_chain, subject)
            user = await self._verify_user(record, context)
        record.delegation = chain
        task = await self._use_task(record, task_id, subject, chain, count=count)
        return subject, chain, user, task

    @staticmethod
    def _time_to_relay(deadline: float, common: dict[str, Any]) -> float:
        """What is left of the call's deadline for the relay; none left ends the call."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise Stop("deadline_exceeded", "the call's deadline passed before relay", **common)
        return remaining

    async def _authorize(
        self,
        record: CallRecord,
        facts: Facts,
        *,
        acting: bool,
        approval_id: str,
        no_wait: bool | str,
        deadline: float,
        trace: TraceContext,
        view_arguments: bool,
    ) -> tuple[Decided, dict[str, Any]]:
        """Ask policy; on step_up (for a call that would act, not a Check) record a pending
        approval, wait for it (or answer with its id), and decide again with the approval.
        Keeps the input on record as the log obligation allows (``view_arguments``: with the
        arguments as the log shows them). Returns the decision and what every result of
        this call carries."""

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
            await self._check_revision(record, decided)
        if decided.decision.effect == "step_up" and acting and approval is None:
            pending = await self._request_approval(record, decided, digest(decided.revision), facts)
            if no_wait:
                raise self._step_up_stop(decided, pending.id, self._no_wait_why(no_wait))
            await self._await_approval(record, pending.id, decided, deadline)
            approval = await self._claim(record, pending.id, digest(decided.revision))
            input_doc = policy_input(approval)
            decided = await self._decide_recorded(record, input_doc, deadline, name, trace)
            await self._check_revision(record, decided)
        log_level = decided.decision.obligations.log
        if log_level in ("full", "redacted"):  # the input on record, as the log obligation allows
            record.input = input_doc
            if view_arguments:  # its arguments as the log shows them
                shown = payload_view(facts.arguments, log_level)["value"]
                record.input = input_doc | {"action": input_doc["action"] | {"arguments": shown}}
        return decided, {"decision": decided.decision, "policy_revision": decided.revision}

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

    async def _credential_headers(
        self,
        target: str,
        credential: CredentialObligation | None,
        task_id: str,
        scrubber: Scrubber,
        user: User | None,
    ) -> dict[str, str]:
        """The headers carrying the sidecar's credential for ``target`` on this call (the
        policy's credential obligation applied); each value is scrubbed from the answer."""
        if user is not None:
            scrubber.add(user.token)  # never echoed back, should an upstream ever hold it
        if self._settings.targets[target].auth.type == "token-exchange":
            injected = await self._exchanger.headers(target, credential, user, task_id)
        else:
            injected = self._credentials.headers_for(
                target, credential, task_id=task_id, fetch=False
            )
        if injected is None:  # fetching a JWT-SVID may wait on the Workload API: in a thread
            injected = await off_loop(
                self._credentials.headers_for, target, credential, task_id=task_id
            )
        for value in injected.values():
            scrubber.add(value.removeprefix("Bearer "))  # never echoed back to the agent
        return injected

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
