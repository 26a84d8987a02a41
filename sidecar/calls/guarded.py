"""The guarded path every kind of call takes, one object built once from its collaborators:
its deadline, the facts (sidecar/calls/establish.py), the policy decision with step-up
(decide.py, step_up.py), the write-ahead intent record and exactly one audit record however
the call ends.

Python here only gathers facts, asks policy and enforces the answer; every "may it happen"
is in Rego. Anything the path cannot establish or understand ends the call with a stable code
(``sidecar.outcomes``), and every call, whatever its end, leaves exactly one audit record,
written before the answer is returned. If that record cannot be written, the answer is
withheld (``audit_unavailable``). The adapters (tools.py, models.py, tasks.py, asserted.py,
sidecar/mcp/calls.py) receive this object and supply their action and their relay; they take
its steps in order: ``run`` (the deadline and the record) around ``begin``, ``establish``,
``authorize``, ``time_to_relay``, ``before_relay``; ``finish`` writes the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.approvals import request_digest
from sidecar.audit import AuditError, AuditSink, CallRecord, payload_view
from sidecar.calls.common import NOT_IN_INTENT, CallResult, Decided, Facts, Stop, answer_margin
from sidecar.calls.decide import Decider
from sidecar.calls.establish import Establisher
from sidecar.calls.step_up import StepUp
from sidecar.identity import CallContext, Subject
from sidecar.ids import new_decision_id
from sidecar.outcomes import status_for
from sidecar.policy import ApprovalInfo, build_input
from sidecar.state import StateError
from sidecar.tasks import Task
from sidecar.telemetry.semconv import call_attributes, span_name
from sidecar.tracing import TraceContext, Tracer, trace_context
from sidecar.users import User

__all__ = ["GuardedPath", "Step"]

log = logging.getLogger("sidecar.pipeline")

# What an adapter runs inside the path: the call's record and its deadline (loop time).
Step = Callable[[CallRecord, float], Awaitable[CallResult]]

# Calls whose span is open; beyond this many (calls that never finished) the oldest is ended.
MAX_OPEN_SPANS = 10_000


@dataclass(frozen=True)
class SpanOptions:
    """What the call spans need from the settings (telemetry on)."""

    # configured provider name -> type (gen_ai.provider.name)
    providers: Mapping[str, str] = field(default_factory=dict)
    # prompts and arguments as attributes under log: full (telemetry.capture_content)
    capture_content: bool = False


def _session(metadata: Any) -> str:
    for key, value in metadata:
        if key == "mcp-session-id":
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class GuardedPath:
    """Every call: deadline, facts, decision (with step-up), intent, one audit record.
    ``stats`` (shared with the decider) and ``metrics`` are read by sidecar.metrics."""

    def __init__(
        self,
        *,
        establisher: Establisher,
        decider: Decider,
        step_up: StepUp,
        audit: AuditSink,
        stats: Counter[str],
        tracer: Tracer | None = None,
    ) -> None:
        self._establisher = establisher
        self._decider = decider
        self._step_up = step_up
        self._audit = audit
        self.stats = stats
        self.metrics: Any = None
        # One span per call, when the tracer is bound (telemetry on): opened in begin,
        # ended with the audit record in finish.
        self.tracer = tracer or Tracer()
        self.span_options = SpanOptions()
        self._open: OrderedDict[str, TraceContext] = OrderedDict()

    async def reject(self, rpc: str, code: str, message: str) -> CallResult:
        """A request refused before it could be decoded (too large, malformed): audited too."""
        record = CallRecord(decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns())
        result = CallResult(record.decision_id, code, status_for(code), message)
        return await self.finish(record, result, time.perf_counter())

    async def run(self, rpc: str, time_remaining: float | None, step: Step) -> CallResult:
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
            result = await step(record, deadline)
        except asyncio.CancelledError:
            # The agent cancelled or went away: the call still ends in exactly one audit
            # record (a relay may have happened), written even if cancelled again meanwhile.
            cancelled = CallResult(
                record.decision_id, "cancelled", status_for("cancelled"), "the call was cancelled"
            )
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self.finish(record, cancelled, started))
            raise
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
        return await self.finish(record, result, started)

    # --- the steps every kind of call takes, in this order ---------------------------------

    def begin(self, record: CallRecord, context: CallContext, intent: str) -> TraceContext:
        """Join the caller's trace (or start one) and note what the call says it is for."""
        trace = trace_context(context.metadata)
        if self.tracer.records_calls:
            trace = self.tracer.start_call(trace, record.time_ns, _session(context.metadata))
            self._open[record.decision_id] = trace
            while len(self._open) > MAX_OPEN_SPANS:
                _, stale = self._open.popitem(last=False)
                self.tracer.end_call(stale, "call", {}, error="abandoned")
        record.trace_id = trace.trace_id
        record.intent = intent
        return trace

    async def establish(
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
        return await self._establisher.establish(
            record, context, trace, delegation_chain=delegation_chain, task_id=task_id, count=count
        )

    def attest(self, record: CallRecord, context: CallContext) -> Subject:
        """The workload alone, for calls that need no more (tasks, lists)."""
        return self._establisher.attest(record, context)

    async def authorize(
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
                delegation_origin=(
                    task.provenance.to_input()
                    if task is not None and task.provenance is not None
                    else None
                ),
                inbound=facts.inbound,
            )

        approval: ApprovalInfo | None = None
        if acting and approval_id:
            approval = await self._step_up.use(
                record,
                approval_id,
                digest(self._decider.revision),
                no_wait=no_wait,
                deadline=deadline,
            )
        input_doc = policy_input(approval)
        name = facts.action.name
        decided = await self._decider.decide_recorded(record, input_doc, deadline, name, trace)
        if approval is not None:
            await self._step_up.check_revision(record, decided)
        if decided.decision.effect == "step_up" and acting and approval is None:
            pending = await self._step_up.request(record, decided, digest(decided.revision), facts)
            if no_wait:
                raise self._step_up.stop(decided, pending.id, self._step_up.no_wait_why(no_wait))
            with self._child("approval wait", trace, **{"agent_sidecar.approval.id": pending.id}):
                await self._step_up.wait(record, pending.id, decided, deadline)
            approval = await self._step_up.claim(record, pending.id, digest(decided.revision))
            input_doc = policy_input(approval)
            decided = await self._decider.decide_recorded(record, input_doc, deadline, name, trace)
            await self._step_up.check_revision(record, decided)
        log_level = decided.decision.obligations.log
        if log_level in ("full", "redacted"):  # the input on record, as the log obligation allows
            record.input = input_doc
            if view_arguments:  # its arguments as the log shows them
                shown = payload_view(facts.arguments, log_level)["value"]
                record.input = input_doc | {"action": input_doc["action"] | {"arguments": shown}}
        return decided, {"decision": decided.decision, "policy_revision": decided.revision}

    @staticmethod
    def time_to_relay(deadline: float, common: dict[str, Any]) -> float:
        """What is left of the call's deadline for the relay; none left ends the call."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise Stop("deadline_exceeded", "the call's deadline passed before relay", **common)
        return remaining

    async def before_relay(self, record: CallRecord, common: dict[str, Any]) -> None:
        """Nothing is relayed unaudited: strict writes the intent first; best_effort needs a
        live writer."""
        trace = self._open.get(record.decision_id)
        if trace is not None:
            self.tracer.mark_relay(trace)
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

    async def finish(self, record: CallRecord, result: CallResult, started: float) -> CallResult:
        record.status = result.status.name
        record.code = result.code
        record.message = result.message
        record.latency_ms["total"] = (time.perf_counter() - started) * 1000
        doc = record.to_dict()
        try:
            await self._audit.commit(doc)
        except AuditError as exc:
            log.error("audit write failed", extra={"decision_id": record.decision_id})
            failed = doc | {"outcome": doc["outcome"] | {"code": "audit_unavailable"}}
            self._observe(failed)
            self._end_span(failed)
            return CallResult(
                record.decision_id,
                "audit_unavailable",
                status_for("audit_unavailable"),
                f"the audit record could not be written: {exc}",
                decision=result.decision,
                policy_revision=result.policy_revision,
                approval_id=result.approval_id,
                approval_url=result.approval_url,
            )
        self._observe(doc)
        self._end_span(doc)
        return result

    def audit_alive(self) -> bool:
        """For health: NOT_SERVING once audit records can no longer be written."""
        return self._audit.alive

    def _child(self, name: str, trace: TraceContext, **attributes: Any) -> Any:
        """A child span of the call (approval wait) when telemetry records calls."""
        if trace.call is None:
            return contextlib.nullcontext()
        return self.tracer.span(name, trace, **attributes)

    def _end_span(self, doc: dict[str, Any]) -> None:
        """End the call's span with what its audit record says (after the record: a span
        can never change or lose a call)."""
        trace = self._open.pop(doc["decision_id"], None)
        if trace is None or trace.call is None:
            return
        try:
            latency = doc.get("latency_ms") or {}
            if "relay" in latency:
                target = (doc.get("upstream") or {}).get("target") or (
                    doc.get("upstream") or {}
                ).get("server", "")
                self.tracer.relay_span(trace, latency["relay"], target=target)
            options = self.span_options
            attributes = call_attributes(
                doc,
                options.providers,
                capture_content=options.capture_content,
                session=trace.call.session,
            )
            outcome = doc.get("outcome") or {}
            error = "" if outcome.get("status", "OK") == "OK" else str(outcome.get("code", ""))
            self.tracer.end_call(trace, span_name(doc), attributes, error)
        except Exception:
            log.exception(
                "ending the call's span failed", extra={"decision_id": doc["decision_id"]}
            )

    def _observe(self, doc: dict[str, Any]) -> None:
        """Metrics, after the audit record: they can never change or lose a call."""
        if self.metrics is None:
            return
        try:
            self.metrics.observe(doc)
        except Exception:
            log.exception("metrics update failed", extra={"decision_id": doc["decision_id"]})
