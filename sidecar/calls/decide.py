"""Asking policy: the engine within the call's deadline (and the shadow policy beside it),
every failure a deny with its stable code (fail-open only for configured read tools when the
engine, not policy, failed), and the answer on record.

One :class:`Decider` per sidecar: the guarded path asks it for every call; the adapters that
only list (models, the MCP list phase) and AuthZEN evaluations ask it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sidecar.audit import CallRecord
from sidecar.calls.common import Decided
from sidecar.policy import Decision, DecisionError, PolicyEngine, parse_decision
from sidecar.policy.decision import ENGINE_FAILURES
from sidecar.tracing import TraceContext, Tracer

__all__ = ["Decider"]

log = logging.getLogger("sidecar.pipeline")


class Decider:
    """The policy engine (and the shadow beside it) behind every decision of this sidecar.
    ``stats`` counts fail-open and shadow outcomes for operators (sidecar.metrics)."""

    def __init__(
        self,
        engine: PolicyEngine,
        *,
        query: str,
        timeout_s: float,
        fail_open: frozenset[str],
        stats: Counter[str],
        tracer: Tracer,
        shadow: PolicyEngine | None = None,
    ) -> None:
        self._engine = engine
        self._shadow = shadow
        self._query = query
        self._timeout_s = timeout_s
        self._fail_open = fail_open
        self._stats = stats
        self._tracer = tracer
        # Told every decision (its input and answer), on the call's path: it may only
        # enqueue (the decision-log export, sidecar/policy/export); set by the app.
        self.on_decision: Callable[[dict[str, Any], Decided], None] | None = None

    @property
    def revision(self) -> str:
        """The policy revision in force now (keys what may be cached per revision)."""
        return self._engine.revision

    async def decide(self, input_doc: dict[str, Any], deadline: float, tool: str) -> Decided:
        """Ask policy alone, nothing on record: for lists that decide per entry."""
        decided = await self._decide(self._engine, input_doc, deadline, tool)
        self._tell(input_doc, decided)
        return decided

    def _tell(self, input_doc: dict[str, Any], decided: Decided) -> None:
        if self.on_decision is None:
            return
        try:
            self.on_decision(input_doc, decided)
        except Exception:  # an export never changes or fails a call
            log.exception("decision hook failed", extra={"decision_id": input_doc["request_id"]})

    async def decide_recorded(
        self,
        record: CallRecord,
        input_doc: dict[str, Any],
        deadline: float,
        tool: str,
        trace: TraceContext,
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
        self._tell(input_doc, decided)
        decision = decided.decision
        record.latency_ms["decide"] = (
            record.latency_ms.get("decide", 0.0) + (time.perf_counter() - t0) * 1000
        )
        record.policy = {
            "engine": self._engine.name,
            "revision": decided.revision,
            "query": self._query,
        }
        if decided.engine_decision_id:
            record.policy["engine_decision_id"] = decided.engine_decision_id
        record.decision = decision.to_dict()
        if shadow is not None:
            record.shadow = shadow.decision.to_dict() | {"revision": shadow.revision}
            self._stats["shadow_evaluations"] += 1
            if shadow.decision.effect != decision.effect:
                self._stats["shadow_disagreements"] += 1
        # Debug, not info: the audit record already holds every decision, and formatting
        # and writing this line cost ~14 µs of CPU per decision on the event loop.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decision",
                extra={
                    "decision_id": record.decision_id,
                    "tool": tool,
                    "effect": decision.effect,
                    "code": decision.code,
                },
            )
        return decided

    async def _decide(
        self, engine: PolicyEngine, input_doc: dict[str, Any], deadline: float, tool: str
    ) -> Decided:
        """Ask policy; any failure is a deny with its code, never an exception. A read tool in
        ``policy.fail_open_on_engine_error`` is allowed when the *engine* fails (counted,
        audited as ``fail_open``); never when policy answered."""
        loop = asyncio.get_running_loop()
        timeout = min(self._timeout_s, deadline - loop.time())
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
                self._stats["fail_open"] += 1
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
