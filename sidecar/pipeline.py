"""The path of one call: attest, classify, decide, enforce, relay, record.

Python here only gathers facts, asks policy and enforces the answer; every "may it happen"
is in Rego. Anything the pipeline cannot establish or understand ends the call with a stable
code (see ``sidecar.outcomes``), and every call, whatever its end, leaves exactly one audit
record, written before the answer is returned. If that record cannot be written, the answer
is withheld (``audit_unavailable``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar.audit import AuditError, AuditSink, CallRecord, payload_view, result_view
from sidecar.classify import classify, redact
from sidecar.config import Settings
from sidecar.identity import Attestor, CallContext, IdentityError, UpstreamCredentials
from sidecar.ids import new_decision_id
from sidecar.outcomes import status_for, status_for_http
from sidecar.policy import (
    Action,
    Decision,
    DecisionError,
    PolicyEngine,
    TaskInfo,
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
from sidecar.tracing import Tracer, trace_context

__all__ = ["CallResult", "Mediator", "ToolCall"]

log = logging.getLogger(__name__)

# Kept back from the agent's deadline so that a timeout inside the sidecar still reaches the
# agent as a specific answer (policy_timeout, deadline_exceeded) rather than a bare deadline.
ANSWER_MARGIN_S = 0.05


@dataclass(frozen=True)
class ToolCall:
    """A CallTool or Check request, decoded."""

    tool: str
    arguments_json: str
    task_id: str = ""
    intent: str = ""


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
        credentials: UpstreamCredentials | None = None,
        shadow: PolicyEngine | None = None,
    ) -> None:
        self._settings = settings
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
        self._relay_pool = ThreadPoolExecutor(
            max_workers=settings.relay.max_concurrency, thread_name_prefix="relay"
        )

    async def reject(self, rpc: str, code: str, message: str) -> CallResult:
        """A request refused before it could be decoded (too large, malformed): audited too."""
        record = CallRecord(decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns())
        result = CallResult(record.decision_id, code, status_for(code), message)
        return self._finish(record, result, time.perf_counter())

    async def call(
        self,
        rpc: str,
        request: ToolCall,
        *,
        context: CallContext,
        time_remaining: float | None,
    ) -> CallResult:
        """Decide (``Check``) or decide and relay (``CallTool``) one request."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + time_remaining - ANSWER_MARGIN_S
            if time_remaining is not None
            else math.inf
        )
        record = CallRecord(decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns())
        try:
            result = await self._run(record, rpc, request, context, deadline)
        except _Stop as stop:
            result = CallResult(
                record.decision_id, stop.code, status_for(stop.code), str(stop), **stop.kwargs
            )
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return self._finish(record, result, started)

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
        record.action = {"kind": "tool", "name": request.tool}
        if not request.tool:
            raise _Stop("malformed_request", "tool is required")
        tool = settings.tools.get(request.tool)
        if tool is None:
            raise _Stop("unknown_tool", f"tool {request.tool!r} is not configured")
        arguments = _parse_arguments(request.arguments_json)

        try:
            with self._tracer.span("attest", trace):
                subject = self._attestor.attest(context)
        except IdentityError as exc:
            raise _Stop(exc.code, str(exc)) from exc
        record.subject = {"spiffe_id": subject.spiffe_id, "attestation": subject.attestation}
        if subject.expires_at is not None:
            record.subject["expires_at"] = subject.expires_at

        action = Action(
            kind="tool",
            name=request.tool,
            operation=tool.operation,
            target=tool.target,
            arguments=arguments,
            data_classes=classify(arguments),
        )
        task = TaskInfo(id=request.task_id, intent=request.intent) if request.task_id else None
        input_doc = build_input(
            request_id=record.decision_id,
            time_ns=record.time_ns,
            subject=subject,
            action=action,
            task=task,
        )
        record.task = input_doc.get("task")
        record.action = {k: v for k, v in input_doc["action"].items() if k != "arguments"} | {
            "arguments": payload_view(arguments, "metadata")
        }
        t0 = time.perf_counter()
        with self._tracer.span("decide", trace, tool=request.tool):
            decided, shadow = await asyncio.gather(
                self._decide(self._engine, input_doc, deadline, request.tool),
                self._shadow_decide(input_doc, deadline),
            )
        decision = decided.decision
        record.latency_ms["decide"] = (time.perf_counter() - t0) * 1000
        record.policy = {
            "engine": self._engine.name,
            "revision": decided.revision,
            "query": settings.policy.query,
        }
        if decided.engine_decision_id:
            record.policy["engine_decision_id"] = decided.engine_decision_id
        record.decision = decision.to_dict()
        if shadow is not None:
            record.shadow = shadow.decision.to_dict() | {"revision": shadow.revision}
            self.stats["shadow_evaluations"] += 1
            if shadow.decision.effect != decision.effect:
                self.stats["shadow_disagreements"] += 1
        log_level = decision.obligations.log
        if log_level in ("full", "redacted"):
            record.input = input_doc | {
                "action": input_doc["action"]
                | {"arguments": payload_view(arguments, log_level)["value"]}
            }
        log.info(
            "decision",
            extra={
                "decision_id": record.decision_id,
                "tool": request.tool,
                "effect": decision.effect,
                "code": decision.code,
            },
        )
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
        if self._audit.strict:
            # Write-ahead: the call is on record before anything reaches the upstream.
            intent = record.to_dict() | {"type": "intent"}
            intent["outcome"] = {
                "status": "PENDING",
                "code": "relaying",
                "message": "",
                "relayed": False,
            }
            try:
                self._audit.write(intent)
            except AuditError as exc:
                raise _Stop(
                    "audit_unavailable", f"the audit record could not be written: {exc}", **common
                ) from exc
        t0 = time.perf_counter()
        try:
            with self._tracer.span("relay", trace, target=tool.target) as span_id:
                response = await asyncio.wait_for(
                    self._send(
                        tool.target,
                        upstream_request,
                        min(timeout, remaining),
                        record,
                        obligations.credential,
                        trace.child_header(span_id),
                    ),
                    timeout=remaining,
                )
        except TimeoutError:
            record.relayed = True
            raise _Stop(
                "deadline_exceeded", "the call's deadline passed during relay", **common
            ) from None
        except UpstreamStatusError as exc:
            record.relayed = True
            record.upstream["status"] = exc.status
            record.upstream["result"] = result_view(exc.body, exc.content_type, log_level)
            result = CallResult(
                record.decision_id,
                exc.code,
                status_for_http(exc.status),
                str(exc),
                upstream_status=exc.status,
                upstream_body=exc.body,
                **common,
            )
            return result
        except (RelayError, IdentityError) as exc:
            if isinstance(exc, IdentityError):
                record.relayed = False
                raise _Stop("credential_unavailable", str(exc), **common) from exc
            raise _Stop(exc.code, str(exc), **common) from exc
        finally:
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
        record.relayed = True
        record.upstream["status"] = response.status
        record.upstream["result"] = result_view(response.body, response.content_type, log_level)
        return CallResult(
            record.decision_id,
            "ok",
            grpc.StatusCode.OK,
            upstream=response,
            upstream_status=response.status,
            **common,
        )

    async def _send(
        self,
        target: str,
        request: Any,
        timeout: float,
        record: CallRecord,
        credential: CredentialObligation | None,
        traceparent: str,
    ) -> UpstreamResponse:
        def send() -> UpstreamResponse:
            # The credential is minted here, in the relay thread: fetching a JWT-SVID may wait
            # on the Workload API, which must not block the event loop.
            headers = {"X-Request-Id": record.decision_id, "traceparent": traceparent}
            headers.update(self._credentials.headers_for(target, credential))
            return self._relay.send(target, request, timeout_s=timeout, headers=headers)

        async with self._relay_slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._relay_pool, send)

    async def _decide(
        self, engine: PolicyEngine, input_doc: dict[str, Any], deadline: float, tool: str
    ) -> _Decided:
        """Ask policy; any failure is a deny with its code, never an exception. A read tool in
        ``policy.fail_open_on_engine_error`` is allowed when the *engine* fails (counted,
        audited as ``fail_open``); never when policy answered."""
        loop = asyncio.get_running_loop()
        timeout = min(self._settings.policy.timeout_ms / 1000, deadline - loop.time())
        revision = engine.revision
        try:
            if timeout <= 0:
                raise DecisionError("policy_timeout", "no time left in the call's deadline")
            result = await engine.evaluate(input_doc, timeout_s=timeout)
            revision = result.revision
            decision = parse_decision(result.value, defined=result.defined)
            return _Decided(decision, revision, result.engine_decision_id)
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
            return _Decided(Decision.fail_closed(exc), revision, None)

    async def _shadow_decide(self, input_doc: dict[str, Any], deadline: float) -> _Decided | None:
        if self._shadow is None:
            return None
        return await self._decide(self._shadow, input_doc, deadline, tool="")

    def _finish(self, record: CallRecord, result: CallResult, started: float) -> CallResult:
        record.status = result.status.name
        record.code = result.code
        record.message = result.message
        record.latency_ms["total"] = (time.perf_counter() - started) * 1000
        doc = record.to_dict()
        try:
            self._audit.write(doc)
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

    def close(self) -> None:
        self._relay_pool.shutdown(wait=False, cancel_futures=True)


def _parse_arguments(text: str) -> dict[str, Any]:
    """Arguments must be one JSON object: no duplicate keys (policy and upstream could read
    different values), no NaN or Infinity (not JSON)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise _Stop("invalid_arguments", f"arguments_json repeats the key {duplicate!r}")
        return dict(pairs)

    def bad_constant(name: str) -> Any:
        raise _Stop("invalid_arguments", f"arguments_json contains {name}, which is not JSON")

    try:
        value = json.loads(
            text or "{}", object_pairs_hook=no_duplicates, parse_constant=bad_constant
        )
    except json.JSONDecodeError as exc:
        raise _Stop("invalid_arguments", f"arguments_json is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _Stop("invalid_arguments", "arguments_json is nested too deeply") from exc
    if not isinstance(value, dict):
        raise _Stop("invalid_arguments", "arguments_json must be a JSON object")
    return value
