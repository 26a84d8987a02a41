"""The path of one call: attest, classify, decide, enforce, relay, record.

Python here only gathers facts, asks policy and enforces the answer; every "may it happen"
is in Rego. Anything the pipeline cannot establish or understand ends the call with a stable
code (see ``sidecar.outcomes``), and every call, whatever its end, leaves exactly one audit
record, written before the answer is returned. If that record cannot be written, the answer
is withheld (``audit_unavailable``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar.approvals import Approval, ApprovalBroker, ApprovalError, request_digest
from sidecar.audit import AuditError, AuditSink, CallRecord, payload_view, result_view
from sidecar.budgets import BudgetExceeded, Budgets
from sidecar.classify import classify, redact
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
from sidecar.model_calls import (
    ModelCall,
    ModelRequestError,
    Usage,
    completion_text,
    estimate_usage,
    parse_model_request,
    policy_arguments,
    provider_body,
    redact_choices,
    reservation_estimate,
    usage_from,
)
from sidecar.outcomes import status_for, status_for_http
from sidecar.policy import (
    Action,
    ApprovalInfo,
    Decision,
    DecisionError,
    PolicyEngine,
    build_input,
    parse_decision,
)
from sidecar.policy.decision import ENGINE_FAILURES, CredentialObligation
from sidecar.relay import (
    HttpRelay,
    RelayError,
    UpstreamResponse,
    UpstreamStatusError,
    build_request,
)
from sidecar.relay.models import ModelRelay
from sidecar.relay.scrub import Scrubber
from sidecar.state import StateError
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.tasks import Task, TaskError, TaskRegistry
from sidecar.tracing import Tracer, trace_context
from sidecar.users import TokenExchanger, User, UserTokenError, UserVerifier

__all__ = ["CallResult", "Mediator", "TaskResult", "ToolCall"]

log = logging.getLogger(__name__)

# Kept back from the agent's deadline so that a timeout inside the sidecar still reaches the
# agent as a specific answer (policy_timeout, deadline_exceeded) rather than a bare deadline.
ANSWER_MARGIN_S = 0.05

# Left out of intent records (write-ahead): the call's own record carries them, and they are
# the large part (the policy input under log: full).
_NOT_IN_INTENT = frozenset({"input", "shadow", "latency_ms"})


# One thread for state work: the database serialises its writes anyway, and one worker spares
# the hand-offs between several threads contending for its lock.
_STATE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")


async def _off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """State work runs in a thread: a locked database (SQLite's busy wait) may stall the calls
    that need it, never the event loop and the calls that do not."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_STATE_THREAD, functools.partial(fn, *args, **kwargs))


def answer_margin(time_remaining: float) -> float:
    """How long before the server's view of the deadline to answer. gRPC sends the timeout
    rounded *up* to three significant digits (15 s arrives as 15.1 s, 120 s as 121 s, 1000 s
    as 1010 s), so the server believes it has up to one unit of the third digit more than the
    client waits: keep that back too, or a long step-up wait ends in a bare DEADLINE_EXCEEDED."""
    if time_remaining <= 0:
        return ANSWER_MARGIN_S
    return ANSWER_MARGIN_S + 10 ** (math.floor(math.log10(time_remaining)) - 2)


@dataclass(frozen=True)
class ToolCall:
    """A CallTool or Check request, decoded."""

    tool: str
    arguments_json: str
    task_id: str = ""
    intent: str = ""
    approval_id: str = ""
    no_wait: bool = False
    delegation_chain: tuple[str, ...] = ()


@dataclass
class TaskResult:
    """How a StartTask or EndTask ends: the task, or why not."""

    decision_id: str
    code: str
    status: grpc.StatusCode
    message: str = ""
    task: Task | None = None


@dataclass
class CallResult:
    """How a call ends. ``status`` OK carries ``upstream`` (CallTool) or just the decision."""

    decision_id: str
    code: str
    status: grpc.StatusCode
    message: str = ""
    decision: Decision | None = None
    policy_revision: str = ""
    upstream: UpstreamResponse | None = None
    upstream_status: int = 0
    upstream_body: bytes = b""
    # The step-up approval to wait for or retry with.
    approval_id: str = ""
    # Model calls: the completion (unary) and the token usage.
    completion: dict[str, Any] | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class _Facts:
    """What the sidecar established about a call before asking policy."""

    subject: Subject
    chain: list[str]
    task: Task | None
    task_id: str
    action: Action
    # What an approval is bound to (the full arguments, or messages and parameters).
    arguments: dict[str, Any]
    # The verified end user the agent acts for, if it passed a user token.
    user: User | None = None


@dataclass(frozen=True)
class _Decided:
    decision: Decision
    revision: str
    engine_decision_id: str | None


class _Stop(Exception):
    """Ends the pipeline early with a result (internal control flow)."""

    def __init__(self, code: str, message: str, **kwargs: Any) -> None:
        super().__init__(message)
        self.code = code
        self.kwargs = kwargs


class Mediator:
    """Runs the path of one call for every RPC of the agent API."""

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

    async def call(
        self,
        rpc: str,
        request: ToolCall,
        *,
        context: CallContext,
        time_remaining: float | None,
    ) -> CallResult:
        """Decide (``Check``) or decide and relay (``CallTool``) one request."""
        return await self._guarded(
            rpc,
            time_remaining,
            lambda record, deadline: self._run(record, rpc, request, context, deadline),
        )

    async def evaluate(
        self,
        rpc: str,
        subject: Subject,
        action: Action,
        *,
        user: User | None,
        caller: str,
        time_remaining: float | None,
    ) -> CallResult:
        """Decide only, for a subject another enforcement point asserts (AuthZEN): the same
        policy, deadline and failure codes as ``Check``, one audit record naming ``caller``."""

        async def run(record: CallRecord, deadline: float) -> CallResult:
            record.subject = {
                "spiffe_id": subject.spiffe_id,
                "attestation": subject.attestation,
                "asserted_by": caller,
            }
            if user is not None:
                record.user = user.to_record()
            arguments = dict(action.arguments)
            record.action = _action_record(action, arguments)
            input_doc = build_input(
                request_id=record.decision_id,
                time_ns=record.time_ns,
                subject=subject,
                action=action,
                user=user,
            )
            trace = trace_context(())
            decided = await self._decide_recorded(record, input_doc, deadline, action.name, trace)
            decision = decided.decision
            record.action["arguments"] = payload_view(arguments, decision.obligations.log)
            return CallResult(
                record.decision_id,
                decision.code,
                grpc.StatusCode.OK,
                decision=decision,
                policy_revision=decided.revision,
            )

        return await self._guarded(rpc, time_remaining, run)

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
        except _Stop as stop:
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

    async def _run(
        self,
        record: CallRecord,
        rpc: str,
        request: ToolCall,
        context: CallContext,
        deadline: float,
    ) -> CallResult:
        settings = self._settings
        trace = trace_context(context.metadata)
        record.trace_id = trace.trace_id
        record.intent = request.intent
        record.action = {"kind": "tool", "name": request.tool}
        if not request.tool:
            raise _Stop("malformed_request", "tool is required")
        tool = settings.tools.get(request.tool)
        if tool is None:
            raise _Stop("unknown_tool", f"tool {request.tool!r} is not configured")
        arguments = _parse_arguments(request.arguments_json)

        with self._tracer.span("attest", trace):
            subject = self._attest(record, context)
            chain = self._verify_delegation(request.delegation_chain, subject)
            user = await self._verify_user(record, context)
        record.delegation = chain
        task = await self._use_task(
            record, request.task_id, subject, chain, count=rpc == "CallTool"
        )

        action = Action(
            kind="tool",
            name=request.tool,
            operation=tool.operation,
            target=tool.target,
            arguments=arguments,
            data_classes=classify(arguments),
        )
        record.action = _action_record(action, arguments)

        facts = _Facts(subject, chain, task, request.task_id, action, arguments, user)
        decided, input_doc = await self._decide_call(
            record,
            facts,
            acting=rpc == "CallTool",
            approval_id=request.approval_id,
            no_wait=request.no_wait,
            deadline=deadline,
            trace=trace,
        )

        decision = decided.decision
        log_level = decision.obligations.log
        if log_level in ("full", "redacted"):
            record.input = input_doc | {
                "action": input_doc["action"]
                | {"arguments": payload_view(arguments, log_level)["value"]}
            }
        common = {"decision": decision, "policy_revision": decided.revision}

        if rpc == "Check" or not decision.allowed:
            record.action["arguments"] = payload_view(arguments, log_level)
            if rpc == "Check":
                return CallResult(record.decision_id, decision.code, grpc.StatusCode.OK, **common)
            raise _Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)

        obligations = decision.obligations
        sent = redact(arguments, obligations.redact) if obligations.redact else arguments
        record.action["arguments"] = payload_view(sent, log_level)
        try:
            upstream_request = build_request(settings.targets[tool.target], tool, sent)
        except RelayError as exc:
            raise _Stop(exc.code, str(exc), **common) from exc

        timeout = tool.timeout_s or settings.targets[tool.target].timeout_s
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _Stop("deadline_exceeded", "the call's deadline passed before relay", **common)
        record.upstream = {
            "target": tool.target,
            "method": upstream_request.method,
            "url": upstream_request.url,
        }
        await self._before_relay(record, common)
        scrubber = Scrubber()
        t0 = time.perf_counter()
        try:
            with self._tracer.span("relay", trace, target=tool.target) as span_id:
                async with asyncio.timeout(remaining):  # the call's deadline (no extra task)
                    response = await self._send(
                        tool.target,
                        upstream_request,
                        timeout,  # the tool's own timeout: upstream_timeout
                        record,
                        obligations.credential,
                        trace.child_header(span_id),
                        request.task_id,
                        scrubber,
                        user,
                    )
        except TimeoutError:
            record.relayed = True
            raise _Stop(
                "deadline_exceeded", "the call's deadline passed during relay", **common
            ) from None
        except UpstreamStatusError as exc:
            record.relayed = True
            record.upstream["status"] = exc.status
            body = scrubber.bytes(exc.body)
            record.upstream["result"] = result_view(body, exc.content_type, log_level)
            record.upstream["credentials_scrubbed"] = scrubber.count
            result = CallResult(
                record.decision_id,
                exc.code,
                status_for_http(exc.status),
                str(exc),
                upstream_status=exc.status,
                upstream_body=body,
                **common,
            )
            return result
        except (RelayError, IdentityError) as exc:
            if isinstance(exc, IdentityError):
                record.relayed = False
                raise _Stop("credential_unavailable", str(exc), **common) from exc
            record.relayed = exc.reached  # a timeout after sending was relayed
            raise _Stop(exc.code, str(exc), **common) from exc
        finally:
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
        record.relayed = True
        response = dataclasses.replace(response, body=scrubber.bytes(response.body))
        record.upstream["status"] = response.status
        record.upstream["result"] = result_view(response.body, response.content_type, log_level)
        record.upstream["credentials_scrubbed"] = scrubber.count
        return CallResult(
            record.decision_id,
            "ok",
            grpc.StatusCode.OK,
            upstream=response,
            upstream_status=response.status,
            **common,
        )

    async def _decide_call(
        self,
        record: CallRecord,
        facts: _Facts,
        *,
        acting: bool,
        approval_id: str,
        no_wait: bool,
        deadline: float,
        trace: Any,
    ) -> tuple[_Decided, dict[str, Any]]:
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

    # --- the facts: identity, delegation, task ----------------------------------------------

    def _attest(self, record: CallRecord, context: CallContext) -> Subject:
        try:
            subject = self._attestor.attest(context)
        except IdentityError as exc:
            raise _Stop(exc.code, str(exc)) from exc
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
            raise _Stop("user_token_malformed", f"one {header} value, as text, is allowed")
        if not self._users.enabled:
            raise _Stop(
                "user_token_unexpected",
                f"a {header} was sent, but no user token issuer is configured (users.issuers)",
            )
        try:
            user = await self._users.verify(values[0])
        except UserTokenError as exc:
            raise _Stop(exc.code, str(exc)) from exc
        record.user = user.to_record()
        return user

    def _verify_delegation(self, tokens: tuple[str, ...], subject: Subject) -> list[str]:
        if not tokens:
            return []
        if self._identity is None:
            raise _Stop(
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
            raise _Stop("delegation_invalid", str(exc)) from exc

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
            task = await _off_loop(self._tasks.use, task_id, subject.spiffe_id, chain, count=count)
        except TaskError as exc:
            raise _Stop(exc.code, str(exc)) from exc
        record.task = {
            "id": task.id,
            "intent": task.intent,
            "owner": task.owner,
            "calls": task.calls,
            "tokens": task.tokens,
        }
        return task

    # --- step-up approvals -------------------------------------------------------------------

    async def _request_approval(
        self, record: CallRecord, decided: _Decided, digest: str, facts: _Facts
    ) -> Approval:
        decision = decided.decision
        obligation = decision.obligations.approval
        assert record.action is not None
        try:
            pending = await _off_loop(
                self._approvals.request,
                digest=digest,
                subject=facts.subject.spiffe_id,
                delegation=facts.chain,
                action={k: record.action[k] for k in ("kind", "name", "operation", "target")},
                arguments=payload_view(facts.arguments, decision.obligations.log),
                task_id=facts.task_id,
                reasons=decision.reasons,
                approvers=obligation.approvers if obligation else (),
                ttl_s=obligation.ttl_s if obligation else self._settings.approvals.max_ttl_s,
                policy_revision=decided.revision,
                decision_id=record.decision_id,
            )
        except ApprovalError as exc:
            raise _Stop(exc.code, str(exc), **self._common(decided)) from exc
        record.approval = {"id": pending.id, "state": "pending", "digest": pending.digest}
        return pending

    async def _await_approval(
        self, record: CallRecord, approval_id: str, decided: _Decided, deadline: float
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
            raise self._step_up_stop(
                decided, approval_id, "the call's deadline came before an approver decided"
            )
        return approval

    async def _use_approval(
        self,
        record: CallRecord,
        approval_id: str,
        digest: str,
        *,
        no_wait: bool,
        deadline: float,
    ) -> ApprovalInfo:
        """A retry with an approval id: wait for it if still pending, then use it."""
        current = self._approvals.get(approval_id)
        if current is not None and current.state == "pending" and current.digest == digest:
            record.approval = current.summary()
            if no_wait:
                raise _Stop(
                    "approval_required",
                    f"approval {approval_id} is still pending",
                    approval_id=approval_id,
                )
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            current = await self._approvals.wait(approval_id, deadline - loop.time())
            record.latency_ms["approval_wait"] = (time.perf_counter() - t0) * 1000
            if current is not None and current.state == "pending":
                record.approval = current.summary()
                raise _Stop(
                    "approval_required",
                    f"approval {approval_id} is still pending at the call's deadline",
                    approval_id=approval_id,
                )
        return await self._claim(record, approval_id, digest)

    async def _claim(self, record: CallRecord, approval_id: str, digest: str) -> ApprovalInfo:
        try:
            approval = await _off_loop(
                self._approvals.claim, approval_id, digest, used_by=record.decision_id
            )
        except ApprovalError as exc:
            current = self._approvals.get(approval_id)
            known = current.summary() if current is not None else {"id": approval_id}
            record.approval = known | {"refused": exc.code}
            code = "approval_required" if exc.code == "approval_pending" else exc.code
            raise _Stop(code, str(exc), approval_id=approval_id) from exc
        record.approval = approval.summary()
        return ApprovalInfo(
            id=approval.id,
            approved_by=approval.decided_by,
            approved_at_ns=approval.decided_at_ns,
            reason=approval.decision_reason,
        )

    def _check_revision(self, record: CallRecord, decided: _Decided) -> None:
        """An approval is for the policy revision that asked for it; the re-decision must be
        by the same one (a reload in between makes the approval useless, never broader)."""
        used = self._approvals.get(record.approval["id"]) if record.approval else None
        if used is not None and used.policy_revision != decided.revision:
            raise _Stop(
                "approval_mismatch",
                f"approval {used.id} was granted under policy revision {used.policy_revision}; "
                f"the policy is now {decided.revision}",
                **self._common(decided),
            )

    def _step_up_stop(self, decided: _Decided, approval_id: str, why: str) -> _Stop:
        reasons = "; ".join(decided.decision.reasons) or "approval required"
        return _Stop(
            "approval_required",
            f"{reasons} ({why}; approval {approval_id})",
            approval_id=approval_id,
            **self._common(decided),
        )

    @staticmethod
    def _common(decided: _Decided) -> dict[str, Any]:
        return {"decision": decided.decision, "policy_revision": decided.revision}

    async def _decide_recorded(
        self,
        record: CallRecord,
        input_doc: dict[str, Any],
        deadline: float,
        tool: str,
        trace: Any,
    ) -> _Decided:
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

    # --- model calls -----------------------------------------------------------------------

    async def call_model(
        self,
        rpc: str,
        request: ModelCall,
        *,
        context: CallContext,
        time_remaining: float | None,
        emit: Callable[[str, Any], None] | None = None,
    ) -> CallResult:
        """Decide and relay one chat completion (``CallModel``, ``StreamModel``, the front
        door). A stream hands ``emit("start", result)`` once relaying begins, then
        ``emit("chunk", chunk)`` per chunk; the returned result carries the usage."""
        return await self._guarded(
            rpc,
            time_remaining,
            lambda record, deadline: self._run_model(record, rpc, request, context, deadline, emit),
        )

    async def _run_model(
        self,
        record: CallRecord,
        rpc: str,
        request: ModelCall,
        context: CallContext,
        deadline: float,
        emit: Callable[[str, Any], None] | None,
    ) -> CallResult:
        settings = self._settings
        trace = trace_context(context.metadata)
        record.trace_id = trace.trace_id
        record.intent = request.intent
        record.action = {"kind": "model", "name": request.model}
        model = settings.models.get(request.model)
        if not request.model:
            raise _Stop("malformed_request", "model is required")
        if model is None:
            raise _Stop("unknown_model", f"model {request.model!r} is not configured")
        try:
            messages, parameters = parse_model_request(request)
        except ModelRequestError as exc:
            raise _Stop(exc.code, str(exc)) from exc
        record.model = {
            "alias": request.model,
            "provider": model.provider,
            "model": model.model or request.model,
            "stream": request.stream,
        }
        with self._tracer.span("attest", trace):
            subject = self._attest(record, context)
            chain = self._verify_delegation(request.delegation_chain, subject)
            user = await self._verify_user(record, context)
        record.delegation = chain
        task = await self._use_task(record, request.task_id, subject, chain, count=True)
        try:
            await _off_loop(self._budgets.check, subject.spiffe_id, task)
        except BudgetExceeded as exc:
            raise _Stop(exc.code, str(exc)) from exc

        prompt = {"messages": messages, "parameters": parameters}
        action = Action(
            kind="model",
            name=request.model,
            operation=model.operation,
            target=model.provider,
            arguments=policy_arguments(messages, parameters),
            data_classes=classify(messages),
        )
        record.action = _action_record(action, prompt)
        facts = _Facts(subject, chain, task, request.task_id, action, prompt, user)
        decided, input_doc = await self._decide_call(
            record,
            facts,
            acting=True,
            approval_id=request.approval_id,
            no_wait=request.no_wait,
            deadline=deadline,
            trace=trace,
        )
        decision = decided.decision
        log_level = decision.obligations.log
        if log_level in ("full", "redacted"):
            record.input = input_doc
        common = self._common(decided)
        if not decision.allowed:
            raise _Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)

        obligations = decision.obligations
        sent = redact(messages, obligations.redact) if obligations.redact else messages
        record.action["arguments"] = payload_view(
            {"messages": sent, "parameters": parameters}, log_level
        )
        body = provider_body(
            request.model,
            model,
            sent,
            parameters,
            max_tokens=obligations.max_tokens,
            stream=request.stream,
        )
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _Stop("deadline_exceeded", "the call's deadline passed before relay", **common)
        provider = settings.providers[model.provider]
        record.upstream = {
            "target": model.provider,
            "method": "POST",
            "url": self._models.url(model.provider),
        }
        await self._before_relay(record, common)
        headers = {
            "X-Request-Id": record.decision_id,
            "traceparent": trace.child_header(),
        }
        scrubber = Scrubber([self._provider_key(model.provider)])
        try:  # counted before relay, so calls in flight cannot all slip under a budget
            reservation = await _off_loop(
                self._budgets.reserve,
                subject.spiffe_id,
                request.task_id,
                reservation_estimate(sent, body),
            )
        except BudgetExceeded as exc:
            raise _Stop(exc.code, str(exc), **common) from exc
        t0 = time.perf_counter()
        text = ""
        delivered: list[str] = []
        usage: Usage | None = None
        try:
            if request.stream:
                text, usage = await self._stream_model(
                    record,
                    model.provider,
                    body,
                    headers,
                    provider.timeout_s,
                    remaining,
                    obligations.redact_response,
                    emit,
                    common,
                    delivered,
                    scrubber,
                )
            else:
                completion = await self._complete_model(
                    model.provider, body, headers, provider.timeout_s, remaining
                )
                completion = scrubber.value(completion)
                record.relayed = True
                record.upstream["status"] = 200
                record.upstream["response_classes"] = classify(completion.get("choices"))
                completion = redact_choices(completion, obligations.redact_response)
                completion["model"] = request.model
                text = completion_text(completion)
                usage = usage_from(completion)
                record.upstream["result"] = {"chars": len(text), **payload_view(text, log_level)}
        except TimeoutError:
            raise _Stop(
                "deadline_exceeded", "the call's deadline passed during relay", **common
            ) from None
        except UpstreamStatusError as exc:
            record.relayed = True
            record.upstream["status"] = exc.status
            return CallResult(
                record.decision_id,
                exc.code,
                status_for_http(exc.status),
                str(exc),
                upstream_status=exc.status,
                upstream_body=scrubber.bytes(exc.body),
                **common,
            )
        except RelayError as exc:
            record.relayed = record.relayed or exc.reached
            raise _Stop(exc.code, str(exc), **common) from exc
        finally:
            # Whatever the provider produced counts against the budgets, also when the call
            # then failed (a broken stream): its usage, or an estimate when it sent none.
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
            record.upstream["credentials_scrubbed"] = scrubber.count
            text = text or "".join(delivered)  # a broken stream: what the agent got
            if usage is None and (
                text or (record.relayed and record.upstream.get("status") == 200)
            ):
                usage = estimate_usage(sent, text)
            if usage is not None:
                record.model["usage"] = usage.to_dict()
            await _off_loop(
                self._budgets.settle, reservation, usage.total_tokens if usage is not None else 0
            )
        result = CallResult(record.decision_id, "ok", grpc.StatusCode.OK, **common)
        result.usage = usage
        if not request.stream:
            result.completion = completion
        return result

    async def list_models(self, context: CallContext) -> tuple[CallResult, list[str]]:
        """The model aliases policy lets this caller use (allow or step_up for an empty
        prompt), for ``GET /v1/models``. One audit record lists them."""
        started = time.perf_counter()
        record = CallRecord(decision_id=new_decision_id(), rpc="ListModels", time_ns=time.time_ns())
        record.action = {"kind": "model", "name": "*"}
        allowed: list[str] = []
        try:
            subject = self._attest(record, context)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._settings.policy.timeout_ms / 1000 * 4
            for alias, model in sorted(self._settings.models.items()):
                action = Action(
                    kind="model",
                    name=alias,
                    operation=model.operation,
                    target=model.provider,
                    arguments=policy_arguments([], {}),
                )
                input_doc = build_input(
                    request_id=record.decision_id,
                    time_ns=record.time_ns,
                    subject=subject,
                    action=action,
                )
                decided = await self._decide(self._engine, input_doc, deadline, alias)
                if decided.decision.effect in ("allow", "step_up"):
                    allowed.append(alias)
            record.model = {"listed": allowed}
            result = CallResult(record.decision_id, "ok", grpc.StatusCode.OK)
        except _Stop as stop:
            result = CallResult(record.decision_id, stop.code, status_for(stop.code), str(stop))
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            allowed = []
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return await self._finish(record, result, started), allowed

    async def _complete_model(
        self,
        provider: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        remaining: float,
    ) -> dict[str, Any]:
        async with self._target_slots[provider], self._relay_slots:
            return await asyncio.wait_for(
                self._models.complete(provider, body, timeout_s=timeout, headers=headers),
                timeout=remaining,
            )

    async def _stream_model(
        self,
        record: CallRecord,
        provider: str,
        body: dict[str, Any],
        headers: dict[str, str],
        read_timeout: float,
        remaining: float,
        redact_classes: tuple[str, ...],
        emit: Callable[[str, Any], None] | None,
        common: dict[str, Any],
        delivered: list[str],
        scrubber: Scrubber,
    ) -> tuple[str, Usage | None]:
        """Relay a stream: chunks go to ``emit`` as they come, with ``redact_response``
        applied across chunk boundaries; returns the whole text and the provider's usage.
        ``delivered`` gets the text that reached the agent also when the stream breaks (the
        budget is charged for it)."""
        redactor = scrubber.stream(redact_classes)
        state: dict[str, Any] = {"text": [], "usage": None, "started": False, "raw": []}
        assert record.upstream is not None

        def handle(chunk: dict[str, Any]) -> None:
            if not state["started"]:
                state["started"] = True
                record.relayed = True
                record.upstream["status"] = 200
                if emit is not None:
                    emit(
                        "start", CallResult(record.decision_id, "ok", grpc.StatusCode.OK, **common)
                    )
            state["usage"] = usage_from(chunk) or state["usage"]
            chunk["model"] = record.action["name"] if record.action else chunk.get("model")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                content = delta.get("content")
                if isinstance(content, str):
                    state["raw"].append(content)
                    released = redactor.feed(content)
                    if choice.get("finish_reason"):
                        released += redactor.flush()
                    delta["content"] = released
                    state["text"].append(released)
                elif choice.get("finish_reason"):
                    rest = redactor.flush()
                    if rest:
                        delta["content"] = rest
                        state["text"].append(rest)
            if emit is not None:
                emit("chunk", scrubber.value(chunk))  # fields other than the text, too

        async def relay() -> None:
            chunks = self._models.stream(provider, body, timeout_s=read_timeout, headers=headers)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    handle(chunk)

        try:
            async with self._target_slots[provider], self._relay_slots:
                await asyncio.wait_for(relay(), timeout=remaining)
        finally:
            # What the redactor still holds (redacted) goes out too, even if the stream broke.
            rest = redactor.flush()
            if rest:
                state["text"].append(rest)
                if emit is not None and state["started"]:
                    emit(
                        "chunk",
                        {
                            "object": "chat.completion.chunk",
                            "model": record.action["name"] if record.action else "",
                            "choices": [
                                {"index": 0, "delta": {"content": rest}, "finish_reason": None}
                            ],
                        },
                    )
            text = "".join(state["text"])
            delivered.append(text)
            scrubber.count_stream("".join(state["raw"]), text)
            log_level = common["decision"].obligations.log
            record.upstream["response_classes"] = classify("".join(state["raw"]))
            record.upstream["result"] = {"chars": len(text), **payload_view(text, log_level)}
        return text, state["usage"]

    def _provider_key(self, provider: str) -> str:
        """The key the relay will send (to scrub it from what comes back); "" when there is
        none or it cannot be read (the relay then refuses with its own code)."""
        try:
            return self._models.keys[provider].get() or ""
        except RelayError:
            return ""

    def audit_alive(self) -> bool:
        return self._audit.alive

    async def _before_relay(self, record: CallRecord, common: dict[str, Any]) -> None:
        """Nothing is relayed unaudited: strict writes the intent first; best_effort needs a
        live writer."""
        if self._audit.strict:
            await self._write_intent(record, common)
        elif not self._audit.alive:
            raise _Stop("audit_unavailable", "the audit writer has stopped", **common)

    async def _write_intent(self, record: CallRecord, common: dict[str, Any]) -> None:
        """Write-ahead: the call is on record before anything reaches the upstream."""
        # What names the call; the policy input and shadow come with the call record.
        intent = {k: v for k, v in record.to_dict().items() if k not in _NOT_IN_INTENT}
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
            raise _Stop(
                "audit_unavailable", f"the audit record could not be written: {exc}", **common
            ) from exc

    # --- tasks -----------------------------------------------------------------------------

    async def task_rpc(
        self,
        rpc: str,
        context: CallContext,
        *,
        intent: str = "",
        ttl_s: int = 0,
        task_id: str = "",
    ) -> TaskResult:
        """StartTask or EndTask for the attested caller; audited like every call."""
        started = time.perf_counter()
        record = CallRecord(
            decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns(), type="task"
        )
        record.action = {"kind": "task", "name": rpc}
        record.intent = intent
        task: Task | None = None
        try:
            subject = self._attest(record, context)
            try:
                if rpc == "StartTask":
                    task = await _off_loop(self._tasks.start, subject.spiffe_id, intent, ttl_s)
                else:
                    task = await _off_loop(self._tasks.end, task_id, subject.spiffe_id)
            except TaskError as exc:
                record.task = {"id": task_id} if task_id else None
                raise _Stop(exc.code, str(exc)) from exc
            record.task = {
                "id": task.id,
                "intent": task.intent,
                "owner": task.owner,
                "state": task.state,
                "calls": task.calls,
                "expires_at_ns": task.expires_ns,
            }
            result = TaskResult(record.decision_id, "ok", grpc.StatusCode.OK, task=task)
        except _Stop as stop:
            result = TaskResult(record.decision_id, stop.code, status_for(stop.code), str(stop))
        except StateError as exc:
            log.error("state database failed", extra={"error": str(exc)})
            result = TaskResult(
                record.decision_id, "state_unavailable", status_for("state_unavailable"), str(exc)
            )
        call = CallResult(result.decision_id, result.code, result.status, result.message)
        finished = await self._finish(record, call, started)
        if finished.code != result.code:  # the audit record could not be written
            return TaskResult(
                finished.decision_id, finished.code, finished.status, finished.message
            )
        return result

    async def _send(
        self,
        target: str,
        request: Any,
        timeout: float,
        record: CallRecord,
        credential: CredentialObligation | None,
        traceparent: str,
        task_id: str,
        scrubber: Scrubber,
        user: User | None,
    ) -> UpstreamResponse:
        headers = {"X-Request-Id": record.decision_id, "traceparent": traceparent}
        if user is not None:
            scrubber.add(user.token)  # never echoed back, should an upstream ever hold it
        if self._settings.targets[target].auth.type == "token-exchange":
            injected = await self._exchanger.headers(target, credential, user, task_id)
        else:
            injected = self._credentials.headers_for(
                target, credential, task_id=task_id, fetch=False
            )
        if injected is None:  # fetching a JWT-SVID may wait on the Workload API: in a thread
            injected = await _off_loop(
                self._credentials.headers_for, target, credential, task_id=task_id
            )
        for value in injected.values():
            scrubber.add(value.removeprefix("Bearer "))  # never echoed back to the agent
        headers.update(injected)
        async with self._target_slots[target], self._relay_slots:
            return await self._relay.send(target, request, timeout_s=timeout, headers=headers)

    async def _decide(
        self, engine: PolicyEngine, input_doc: dict[str, Any], deadline: float, tool: str
    ) -> _Decided:
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
            return _Decided(decision, revision, engine_decision_id)
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
                return _Decided(
                    Decision(
                        effect="allow",
                        reasons=(f"fail-open ({exc.code}): {exc}",),
                        code="fail_open",
                    ),
                    revision,
                    None,
                )
            return _Decided(Decision.fail_closed(exc), revision, engine_decision_id)

    async def _shadow_decide(self, input_doc: dict[str, Any], deadline: float) -> _Decided | None:
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


def _action_record(action: Action, payload: dict[str, Any]) -> dict[str, Any]:
    """The action as audited: arguments (or the prompt) by name only until the decision's
    ``log`` obligation says more may be recorded."""
    return {
        "kind": action.kind,
        "name": action.name,
        "operation": action.operation,
        "target": action.target,
        "data_classes": sorted(set(action.data_classes)),
        "arguments": payload_view(payload, "metadata"),
    }


def _parse_arguments(text: str) -> dict[str, Any]:
    """Arguments must be one JSON object, read strictly (``sidecar/strict_json.py``)."""
    try:
        value = loads_strict(text or "{}", "arguments_json")
    except StrictJsonError as exc:
        raise _Stop("invalid_arguments", str(exc)) from exc
    if not isinstance(value, dict):
        raise _Stop("invalid_arguments", "arguments_json must be a JSON object")
    return value
