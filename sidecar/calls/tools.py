"""Tool calls (``CallTool`` and ``Check``): the tool's action from its configuration, the
upstream request built from the arguments, the credential injected, the answer scrubbed.

An adapter: it receives the guarded path (sidecar/calls/guarded.py), which does the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import grpc

from sidecar.audit import CallRecord, payload_view, result_view
from sidecar.calls.common import (
    CallResult,
    Facts,
    Stop,
    ToolCall,
    action_record,
    parse_arguments,
)
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.relaying import RelayGate
from sidecar.classify import classify, redact
from sidecar.config import Settings
from sidecar.identity import CallContext, IdentityError
from sidecar.outcomes import status_for_http
from sidecar.policy import Action
from sidecar.policy.decision import CredentialObligation
from sidecar.relay import (
    HttpRelay,
    RelayError,
    UpstreamResponse,
    UpstreamStatusError,
    build_request,
)
from sidecar.relay.scrub import Scrubber
from sidecar.tracing import Tracer
from sidecar.users import User

__all__ = ["ToolCalls"]

log = logging.getLogger("sidecar.pipeline")


class ToolCalls:
    """CallTool and Check: the configured tools, relayed over HTTP."""

    def __init__(
        self,
        path: GuardedPath,
        gate: RelayGate,
        relay: HttpRelay,
        settings: Settings,
        tracer: Tracer,
    ) -> None:
        self._path = path
        self._gate = gate
        self._relay = relay
        self._settings = settings
        self._tracer = tracer

    async def call(
        self,
        rpc: str,
        request: ToolCall,
        *,
        context: CallContext,
        time_remaining: float | None,
    ) -> CallResult:
        """Decide (``Check``) or decide and relay (``CallTool``) one request."""
        return await self._path.run(
            rpc,
            time_remaining,
            lambda record, deadline: self._run(record, rpc, request, context, deadline),
        )

    async def _run(
        self,
        record: CallRecord,
        rpc: str,
        request: ToolCall,
        context: CallContext,
        deadline: float,
    ) -> CallResult:
        settings = self._settings
        trace = self._path.begin(record, context, request.intent)
        record.action = {"kind": "tool", "name": request.tool}
        if not request.tool:
            raise Stop("malformed_request", "tool is required")
        tool = settings.tools.get(request.tool)
        if tool is None:
            raise Stop("unknown_tool", f"tool {request.tool!r} is not configured")
        arguments = parse_arguments(request.arguments_json)
        subject, chain, user, task = await self._path.establish(
            record,
            context,
            trace,
            delegation_chain=request.delegation_chain,
            task_id=request.task_id,
            count=rpc == "CallTool",
        )
        action = Action(
            kind="tool",
            name=request.tool,
            operation=tool.operation,
            target=tool.target,
            arguments=arguments,
            data_classes=classify(arguments),
        )
        record.action = action_record(action, arguments)
        facts = Facts(subject, chain, task, request.task_id, action, arguments, user)
        decided, common = await self._path.authorize(
            record,
            facts,
            acting=rpc == "CallTool",
            approval_id=request.approval_id,
            no_wait=request.no_wait,
            deadline=deadline,
            trace=trace,
            view_arguments=True,
        )
        decision = decided.decision
        log_level = decision.obligations.log

        if rpc == "Check" or not decision.allowed:
            record.action["arguments"] = payload_view(arguments, log_level)
            if rpc == "Check":
                return CallResult(record.decision_id, decision.code, grpc.StatusCode.OK, **common)
            raise Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)

        obligations = decision.obligations
        sent = redact(arguments, obligations.redact) if obligations.redact else arguments
        record.action["arguments"] = payload_view(sent, log_level)
        try:
            upstream_request = build_request(settings.targets[tool.target], tool, sent)
        except RelayError as exc:
            raise Stop(exc.code, str(exc), **common) from exc

        timeout = tool.timeout_s or settings.targets[tool.target].timeout_s
        remaining = self._path.time_to_relay(deadline, common)
        record.upstream = {
            "target": tool.target,
            "method": upstream_request.method,
            "url": upstream_request.url,
        }
        await self._path.before_relay(record, common)
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
            raise Stop(
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
                raise Stop("credential_unavailable", str(exc), **common) from exc
            record.relayed = exc.reached  # a timeout after sending was relayed
            raise Stop(exc.code, str(exc), **common) from exc
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
        headers.update(
            await self._gate.credential_headers(target, credential, task_id, scrubber, user)
        )
        async with self._gate.slots(target):
            return await self._relay.send(target, request, timeout_s=timeout, headers=headers)
