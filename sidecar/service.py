"""The ``agentsidecar.v1.Sidecar`` handlers: decode the request, hand it to the adapter that
serves it (tools, models, tasks; sidecar/calls/), encode the answer.

Handlers receive raw request bytes (no deserializer is registered), so an oversized or
undecodable request is answered ``INVALID_ARGUMENT`` *and audited* (the guarded path's
``reject``) instead of being dropped inside gRPC. Every non-OK answer carries a
``google.rpc.Status`` with a ``CallError`` detail (stable code, decision with reasons and
decision id, upstream status) in ``grpc-status-details-bin``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import any_pb2, message
from google.rpc import status_pb2

from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.calls.common import CallResult, TaskResult, ToolCall
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.models import ModelCalls
from sidecar.calls.tasks import TaskCalls
from sidecar.calls.tools import ToolCalls
from sidecar.identity import CallContext
from sidecar.model_calls import ModelCall
from sidecar.policy import Decision
from sidecar.stream_bridge import InFlight, StreamBridge, finish
from sidecar.tasks import Task

__all__ = ["SERVICE_NAME", "PeerHandlers", "SidecarService", "abort", "call_context"]

SERVICE_NAME = sidecar_pb2.DESCRIPTOR.services_by_name["Sidecar"].full_name


def decision_message(result: CallResult) -> sidecar_pb2.Decision:
    decision: Decision | None = result.decision
    if decision is None:
        # Refused before or without a policy decision (task_ended, approval_used, ...): the
        # refusal's message is the reason, so `PolicyDenied.reasons` is never empty.
        return sidecar_pb2.Decision(
            decision_id=result.decision_id,
            code=result.code,
            approval_id=result.approval_id,
            approval_url=result.approval_url,
            reasons=[result.message] if result.message else [],
        )
    return sidecar_pb2.Decision(
        decision_id=result.decision_id,
        effect=decision.effect,
        reasons=list(decision.reasons),
        code=decision.code,
        obligations_json=decision.obligations_json(),
        policy_revision=result.policy_revision,
        approval_id=result.approval_id,
        approval_url=result.approval_url,
    )


class PeerHandlers(Protocol):
    """CallPeer and StreamPeer (sidecar/a2a/grpc_calls.py), when A2A peers are configured."""

    async def call_peer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any: ...

    def stream_peer(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...


def task_message(task: Task) -> sidecar_pb2.Task:
    return sidecar_pb2.Task(
        task_id=task.id,
        intent=task.intent,
        owner=task.owner,
        state=task.state,
        started_at_ns=task.started_ns,
        expires_at_ns=task.expires_ns,
        ended_at_ns=task.ended_ns,
        calls=task.calls,
        tokens=task.tokens,
    )


class SidecarService:
    """The ``agentsidecar.v1.Sidecar`` handlers over the adapters they serve."""

    def __init__(
        self,
        *,
        path: GuardedPath,
        tools: ToolCalls,
        models: ModelCalls,
        tasks: TaskCalls,
        max_request_bytes: int,
    ) -> None:
        self._path = path  # refusals before decoding
        self._tools = tools
        self._models = models
        self._tasks = tasks
        self._max = max_request_bytes
        # Set by the wiring (sidecar/app.py) when a2a_peers is configured.
        self.peers: PeerHandlers | None = None
        self.streams = InFlight()  # StreamModel's calls, drained by Sidecar.stop

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes, Any], Awaitable[Any]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "CallTool": unary(self.call_tool),
                "Check": unary(self.check),
                "CallModel": unary(self.call_model),
                "StreamModel": grpc.unary_stream_rpc_method_handler(
                    self.stream_model, request_deserializer=None, response_serializer=_serialize
                ),
                "CallPeer": unary(self.call_peer),
                "StreamPeer": grpc.unary_stream_rpc_method_handler(
                    self.stream_peer, request_deserializer=None, response_serializer=_serialize
                ),
                "StartTask": unary(self.start_task),
                "EndTask": unary(self.end_task),
            },
        )

    async def call_tool(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        result = await self._handle("CallTool", sidecar_pb2.CallToolRequest, raw, context)
        upstream = result.upstream
        assert upstream is not None
        return sidecar_pb2.CallToolResponse(
            decision=decision_message(result),
            upstream_status=upstream.status,
            content_type=upstream.content_type,
            body=upstream.body,
        )

    async def check(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        result = await self._handle("Check", sidecar_pb2.CheckRequest, raw, context)
        return sidecar_pb2.CheckResponse(decision=decision_message(result))

    async def call_model(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode_model(raw, context, "CallModel")
        result = await self._models.call_model(
            "CallModel",
            request,
            context=_call_context(context),
            time_remaining=context.time_remaining(),
        )
        if result.status != grpc.StatusCode.OK:
            await _abort(context, result)
        return sidecar_pb2.CallModelResponse(
            decision=decision_message(result),
            completion_json=json.dumps(result.completion, separators=(",", ":")),
            usage=_usage_message(result),
        )

    async def stream_model(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode_model(raw, context, "StreamModel")
        bridge = StreamBridge()  # bounded: a slow agent holds the relay back, not memory
        call = self.streams.start(
            self._models.call_model(
                "StreamModel",
                dataclasses.replace(request, stream=True),
                context=_call_context(context),
                time_remaining=context.time_remaining(),
                emit=bridge.put,
            )
        )
        first: Any = None
        try:
            async for kind, value in bridge.events(call):
                if kind == "start":
                    first = decision_message(value)
                elif kind == "chunk":
                    yield sidecar_pb2.ModelChunk(
                        decision=first, chunk_json=json.dumps(value, separators=(",", ":"))
                    )
                    first = None
        finally:
            bridge.close()
            await finish(call)  # cancelled if the agent went away; its record written first
        result = call.result()
        if result.status != grpc.StatusCode.OK:
            await _abort(context, result)
        yield sidecar_pb2.ModelChunk(decision=first, usage=_usage_message(result))

    async def call_peer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        if self.peers is None:
            await self._no_peers("CallPeer", context)
        assert self.peers is not None
        return await self.peers.call_peer(raw, context)

    async def stream_peer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        if self.peers is None:
            await self._no_peers("StreamPeer", context)
        assert self.peers is not None
        async for event in self.peers.stream_peer(raw, context):
            yield event

    async def _no_peers(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        """No a2a_peers: every peer is unknown (audited, NOT_FOUND)."""
        result = await self._path.reject(rpc, "unknown_peer", "no A2A peers are configured")
        await _abort(context, result)

    async def _decode_model(self, raw: bytes, context: Any, rpc: str) -> ModelCall:
        msg = await self._decode(rpc, sidecar_pb2.CallModelRequest, raw, context)
        return ModelCall(
            model=msg.model,
            messages_json=msg.messages_json,
            parameters_json=msg.parameters_json,
            task_id=msg.task_id,
            intent=msg.intent,
            approval_id=msg.approval_id,
            no_wait=msg.no_wait,
            delegation_chain=tuple(msg.delegation_chain),
            api=msg.api or "chat",
        )

    async def _decode(self, rpc: str, message_type: Any, raw: bytes, context: Any) -> Any:
        """The request message, or an audited INVALID_ARGUMENT abort (too large, undecodable)."""
        if len(raw) > self._max:
            result = await self._path.reject(
                rpc,
                "request_too_large",
                f"request is {len(raw)} bytes; the limit is {self._max} (server.max_request_bytes)",
            )
            await _abort(context, result)
        try:
            return message_type.FromString(raw)
        except message.DecodeError:
            result = await self._path.reject(
                rpc, "malformed_request", f"the request is not a valid {rpc} message"
            )
            await _abort(context, result)
            raise

    async def start_task(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode("StartTask", sidecar_pb2.StartTaskRequest, raw, context)
        result = await self._tasks.task_rpc(
            "StartTask", _call_context(context), intent=request.intent, ttl_s=request.ttl_s
        )
        return await self._task_answer(result, context)

    async def end_task(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode("EndTask", sidecar_pb2.EndTaskRequest, raw, context)
        result = await self._tasks.task_rpc(
            "EndTask", _call_context(context), task_id=request.task_id
        )
        return await self._task_answer(result, context)

    async def _task_answer(self, result: TaskResult, context: grpc.aio.ServicerContext) -> Any:
        if result.status != grpc.StatusCode.OK:
            await _abort(
                context, CallResult(result.decision_id, result.code, result.status, result.message)
            )
        assert result.task is not None
        return task_message(result.task)

    async def _handle(
        self, rpc: str, message_type: Any, raw: bytes, context: grpc.aio.ServicerContext
    ) -> CallResult:
        request = await self._decode(rpc, message_type, raw, context)
        result = await self._tools.call(
            rpc,
            ToolCall(
                tool=request.tool,
                arguments_json=request.arguments_json,
                task_id=request.task_id,
                intent=request.intent,
                approval_id=getattr(request, "approval_id", ""),
                no_wait=getattr(request, "no_wait", False),
                delegation_chain=tuple(request.delegation_chain),
            ),
            context=_call_context(context),
            time_remaining=context.time_remaining(),
        )
        if result.status != grpc.StatusCode.OK:
            await _abort(context, result)
        return result


def _usage_message(result: CallResult) -> sidecar_pb2.Usage | None:
    usage = result.usage
    if usage is None:
        return None
    return sidecar_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        estimated=usage.estimated,
    )


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


def _call_context(context: grpc.aio.ServicerContext) -> CallContext:
    return CallContext(
        metadata=tuple(context.invocation_metadata() or ()),
        peer=context.peer(),
        auth_context=context.auth_context() or {},
    )


async def _abort(context: grpc.aio.ServicerContext, result: CallResult) -> None:
    """End the RPC with ``result``'s status and a CallError detail (its ``code``)."""
    detail = sidecar_pb2.CallError(
        code=result.code,
        decision=decision_message(result),
        upstream_status=result.upstream_status,
        upstream_body=result.upstream_body,
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    status = status_pb2.Status(
        code=result.status.value[0], message=result.message or result.code, details=[packed]
    )
    await context.abort(
        result.status,
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


# For the handlers that live beside their transport (sidecar/a2a/grpc_calls.py).
abort = _abort
call_context = _call_context
