"""Model calls (``CallModel``, ``StreamModel``, the front door): the prompt summarised for
policy, budgets reserved before relay and settled after, completions and streams redacted.

An adapter: it receives the guarded path (sidecar/calls/guarded.py), which does the rest;
listing the models asks the decider per alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from sidecar.audit import CallRecord, payload_view
from sidecar.budgets import BudgetExceeded, Budgets
from sidecar.calls.common import CallResult, Facts, Stop, action_record, off_loop
from sidecar.calls.decide import Decider
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.relaying import RelayGate
from sidecar.classify import classify, redact
from sidecar.config import Settings
from sidecar.identity import CallContext
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
from sidecar.policy import Action, build_input
from sidecar.relay import RelayError, UpstreamStatusError
from sidecar.relay.models import ModelRelay
from sidecar.relay.scrub import Scrubber

__all__ = ["ModelCalls"]

log = logging.getLogger("sidecar.pipeline")


class ModelCalls:
    """Model calls over gRPC and the front door, on the configured providers."""

    def __init__(
        self,
        path: GuardedPath,
        gate: RelayGate,
        decider: Decider,
        models: ModelRelay,
        budgets: Budgets,
        settings: Settings,
    ) -> None:
        self._path = path
        self._gate = gate
        self._decider = decider
        self._models = models
        self._budgets = budgets
        self._settings = settings

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
        return await self._path.run(
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
        trace = self._path.begin(record, context, request.intent)
        record.action = {"kind": "model", "name": request.model}
        model = settings.models.get(request.model)
        if not request.model:
            raise Stop("malformed_request", "model is required")
        if model is None:
            raise Stop("unknown_model", f"model {request.model!r} is not configured")
        try:
            messages, parameters = parse_model_request(request)
        except ModelRequestError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.model = {
            "alias": request.model,
            "provider": model.provider,
            "model": model.model or request.model,
            "stream": request.stream,
        }
        subject, chain, user, task = await self._path.establish(
            record,
            context,
            trace,
            delegation_chain=request.delegation_chain,
            task_id=request.task_id,
            count=True,
        )
        try:
            await off_loop(self._budgets.check, subject.spiffe_id, task)
        except BudgetExceeded as exc:
            raise Stop(exc.code, str(exc)) from exc

        prompt = {"messages": messages, "parameters": parameters}
        action = Action(
            kind="model",
            name=request.model,
            operation=model.operation,
            target=model.provider,
            arguments=policy_arguments(messages, parameters),
            data_classes=classify(messages),
        )
        record.action = action_record(action, prompt)
        facts = Facts(subject, chain, task, request.task_id, action, prompt, user)
        decided, common = await self._path.authorize(
            record,
            facts,
            acting=True,
            approval_id=request.approval_id,
            no_wait=request.no_wait,
            deadline=deadline,
            trace=trace,
            view_arguments=False,  # (the input holds a summary of the prompt, not the prompt)
        )
        decision = decided.decision
        log_level = decision.obligations.log
        if not decision.allowed:
            raise Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)

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
        remaining = self._path.time_to_relay(deadline, common)
        provider = settings.providers[model.provider]
        record.upstream = {
            "target": model.provider,
            "method": "POST",
            "url": self._models.url(model.provider),
        }
        await self._path.before_relay(record, common)
        headers = {
            "X-Request-Id": record.decision_id,
            "traceparent": trace.child_header(),
        }
        scrubber = Scrubber([self._provider_key(model.provider)])
        try:  # counted before relay, so calls in flight cannot all slip under a budget
            reservation = await off_loop(
                self._budgets.reserve,
                subject.spiffe_id,
                request.task_id,
                reservation_estimate(sent, body),
            )
        except BudgetExceeded as exc:
            raise Stop(exc.code, str(exc), **common) from exc
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
            raise Stop(
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
            raise Stop(exc.code, str(exc), **common) from exc
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
            await off_loop(
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
            subject = self._path.attest(record, context)
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
                decided = await self._decider.decide(input_doc, deadline, alias)
                if decided.decision.effect in ("allow", "step_up"):
                    allowed.append(alias)
            record.model = {"listed": allowed}
            result = CallResult(record.decision_id, "ok", grpc.StatusCode.OK)
        except Stop as stop:
            result = CallResult(record.decision_id, stop.code, status_for(stop.code), str(stop))
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            allowed = []
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return await self._path.finish(record, result, started), allowed

    async def _complete_model(
        self,
        provider: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        remaining: float,
    ) -> dict[str, Any]:
        async with self._gate.slots(provider):
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
            async with self._gate.slots(provider):
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
