"""Model calls (``CallModel``, ``StreamModel``, the front door), whatever the API (chat,
responses, embeddings, ...: sidecar/model_apis/ supplies each API's parts): the prompt
summarised for policy, budgets reserved before relay and settled after, answers and streams
redacted.

An adapter: it receives the guarded path (sidecar/calls/guarded.py), which does the rest;
listing the models asks the decider per alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
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
from sidecar.model_apis import APIS, ModelApi
from sidecar.model_apis.base import (
    Answer,
    RedactorFactory,
    redact_deep,
    strip_credentials,
    text_parameters,
    with_decoded_json,
)
from sidecar.model_calls import ModelCall, ModelRequestError, Usage, policy_arguments
from sidecar.outcomes import status_for, status_for_http
from sidecar.policy import Action, build_input
from sidecar.relay import RelayError, UpstreamStatusError
from sidecar.relay.errors import UpstreamStreamInterrupted
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
        emit: Callable[[str, Any], Any] | None = None,
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
        emit: Callable[[str, Any], Any] | None,
    ) -> CallResult:
        settings = self._settings
        trace = self._path.begin(record, context, request.intent)
        record.action = {"kind": "model", "name": request.model, "api": request.api[:64]}
        model = settings.models.get(request.model)
        api = APIS.get(request.api)
        if api is None:
            raise Stop("malformed_request", f"unknown model api {request.api!r}")
        if not request.model:
            raise Stop("malformed_request", "model is required")
        if model is None:
            raise Stop("unknown_model", f"model {request.model!r} is not configured")
        provider = settings.providers[model.provider]
        if api.name not in model.apis_for(provider.type):
            raise Stop(
                "wrong_model_api",
                f"model {request.model!r} ({provider.type} format) is not served through the "
                f"{api.name} API; it allows: {', '.join(model.apis_for(provider.type))}",
            )
        try:
            parsed = api.parse(request)
        except ModelRequestError as exc:
            raise Stop(exc.code, str(exc)) from exc
        content, parameters = parsed.content, parsed.parameters
        record.model = {
            "alias": request.model,
            "provider": model.provider,
            "model": model.model or request.model,
            "api": api.name,
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

        # Credentials (an MCP server's token, say) reach neither policy nor the audit log.
        prompt = strip_credentials({**content, "parameters": parameters})
        # Classified: the API's texts and every parameter that is not a number, boolean or
        # enum (tool descriptions, schemas, metadata, ...), JSON inside strings decoded too.
        checked = [api.classified(content), text_parameters(parameters)]
        action = Action(
            kind="model",
            name=request.model,
            operation=model.operation,
            target=model.provider,
            arguments=strip_credentials(parsed.summary),
            data_classes=classify(with_decoded_json(checked)),
            api=api.name,
        )
        record.action = action_record(action, prompt) | {"api": api.name}
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
        # an API may redact only its texts (Messages: image data stays byte-exact)
        redact_content = getattr(api, "redact", redact)
        sent = redact_content(content, obligations.redact) if obligations.redact else content
        if obligations.redact:  # the text-bearing parameters too
            parameters = parameters | redact_deep(text_parameters(parameters), obligations.redact)
        record.action["arguments"] = payload_view(
            strip_credentials({**sent, "parameters": parameters}), log_level
        )
        body = api.provider_body(
            model.model or request.model,
            sent,
            parameters,
            max_tokens=obligations.max_tokens,
            stream=request.stream,
            # a budgeted call is sent the cap its reservation counts (token_estimate)
            default_max_tokens=self._budgets.default_output_cap(request.task_id),
        )
        remaining = self._path.time_to_relay(deadline, common)
        record.upstream = {
            "target": model.provider,
            "method": "POST",
            "url": self._models.url(model.provider, api.provider_path),
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
                api.reservation(sent, body),
            )
        except BudgetExceeded as exc:
            raise Stop(exc.code, str(exc), **common) from exc
        t0 = time.perf_counter()
        text = ""
        delivered: list[str] = []
        usage: Usage | None = None
        unknown_cost = False  # reached the provider, but its usage cannot be known
        broken_stream = False  # a stream that ended without the provider's usage
        answer: Answer | None = None
        try:
            if request.stream:
                text, usage = await self._stream_model(
                    record,
                    api,
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
                broken_stream = usage is None
            else:
                raw = await self._complete_model(
                    model.provider, api.provider_path, body, headers, provider.timeout_s, remaining
                )
                record.relayed = True
                record.upstream["status"] = 200
                answer = api.unary(raw, request.model, obligations.redact_response, scrubber)
                record.upstream["response_classes"] = answer.classes
                text, usage = answer.text, answer.usage
                record.upstream["result"] = {"chars": len(text), **payload_view(text, log_level)}
        except asyncio.CancelledError:  # the agent cancelled: the provider still bills it
            record.relayed = unknown_cost = True  # (the request may have reached it)
            raise
        except TimeoutError:
            # The provider may have the request; no usage will come back.
            record.relayed = unknown_cost = True
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
                upstream_headers=dict(getattr(exc, "retry_headers", {}) or {}),
                **common,
            )
        except RelayError as exc:
            record.relayed = record.relayed or exc.reached
            unknown_cost = exc.reached
            broken_stream = request.stream and record.upstream.get("status") == 200
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
                usage = api.estimate(sent, text)
            if broken_stream or (request.stream and unknown_cost):
                # A stream cut before the provider's usage: the provider bills what it
                # generated, which may be more than reached the agent (thinking, tool JSON,
                # text past the cut): charged the larger of the estimate and the reservation.
                # (the estimate's parts are kept: what reached the agent, for the audit)
                usage = Usage(
                    usage.prompt_tokens if usage is not None else 0,
                    usage.completion_tokens if usage is not None else 0,
                    max(usage.total_tokens if usage is not None else 0, reservation.tokens),
                    estimated=True,
                )
            if usage is None and unknown_cost:
                # It reached the provider, which bills it, and no usage came back (cut off
                # at the deadline, cancelled, an answer too large): charged its reservation.
                usage = Usage(0, 0, reservation.tokens, estimated=True)
            if usage is not None:
                record.model["usage"] = usage.to_dict()
            await off_loop(
                self._budgets.settle, reservation, usage.total_tokens if usage is not None else 0
            )
        result = CallResult(record.decision_id, "ok", grpc.StatusCode.OK, **common)
        result.usage = usage
        if answer is not None:
            result.completion = answer.body
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
                # Listed when policy lets the caller reach it through any of its APIs.
                kind = self._settings.providers[model.provider].type
                for api in model.apis_for(kind):
                    action = Action(
                        kind="model",
                        name=alias,
                        operation=model.operation,
                        target=model.provider,
                        arguments=policy_arguments([], {}),
                        api=api,
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
                        break
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
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        remaining: float,
    ) -> dict[str, Any]:
        async with self._gate.slots(provider):
            return await asyncio.wait_for(
                self._models.complete(
                    provider, body, timeout_s=timeout, headers=headers, path=path
                ),
                timeout=remaining,
            )

    async def _stream_model(
        self,
        record: CallRecord,
        api: ModelApi,
        provider: str,
        body: dict[str, Any],
        headers: dict[str, str],
        read_timeout: float,
        remaining: float,
        redact_classes: tuple[str, ...],
        emit: Callable[[str, Any], Any] | None,
        common: dict[str, Any],
        delivered: list[str],
        scrubber: Scrubber,
    ) -> tuple[str, Usage | None]:
        """Relay a stream: events go to ``emit`` as they come, redacted by the API's handler
        across event boundaries; returns the whole text and the provider's usage.
        ``delivered`` gets the text that reached the agent also when the stream breaks (the
        budget is charged for it). A stream that ends before the API's final event is
        :class:`UpstreamStreamInterrupted`."""
        assert record.upstream is not None and record.action is not None
        handler = api.stream(
            record.action["name"], RedactorFactory(redact_classes, scrubber), scrubber
        )
        started = False

        async def forward(values: list[dict[str, Any]]) -> None:
            """To ``emit``; an ``emit`` that returns an awaitable (the front door's bounded
            queue) is awaited: a slow agent then holds the relay back, not its memory."""
            nonlocal started
            if not started:
                started = True
                record.relayed = True
                record.upstream["status"] = 200
                if emit is not None:
                    waiting = emit(
                        "start", CallResult(record.decision_id, "ok", grpc.StatusCode.OK, **common)
                    )
                    if inspect.isawaitable(waiting):
                        await waiting
            if emit is not None:
                for value in values:
                    waiting = emit("chunk", value)
                    if inspect.isawaitable(waiting):
                        await waiting

        async def relay() -> None:
            events = self._models.stream(
                provider, body, timeout_s=read_timeout, headers=headers, path=api.provider_path
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    await forward(handler.feed(event))
                    if handler.done:
                        return
            raise UpstreamStreamInterrupted("the provider's stream ended before its final event")

        try:
            async with self._gate.slots(provider):
                await asyncio.wait_for(relay(), timeout=remaining)
        finally:
            # What the redactors still hold (redacted) goes out too, even if the stream broke.
            rest = handler.flush()
            if rest and started:
                await forward(rest)
            text = handler.text
            # everything the agent got (an API's handler may count thinking and tool JSON)
            delivered.append(getattr(handler, "delivered", text))
            scrubber.count_stream(handler.raw, text)
            log_level = common["decision"].obligations.log
            record.upstream["response_classes"] = classify(handler.raw)
            record.upstream["result"] = {"chars": len(text), **payload_view(text, log_level)}
        return text, handler.usage

    def _provider_key(self, provider: str) -> str:
        """The key the relay will send (to scrub it from what comes back); "" when there is
        none or it cannot be read (the relay then refuses with its own code)."""
        try:
            return self._models.keys[provider].get() or ""
        except RelayError:
            return ""
