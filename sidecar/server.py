"""gRPC wiring: the agent API, health, reflection, graceful shutdown.

Handlers receive raw request bytes (no deserializer is registered), so an oversized or
undecodable request is answered ``INVALID_ARGUMENT`` *and audited* by the sidecar itself
instead of being dropped inside gRPC. The transport's own limit is set well above
``server.max_request_bytes`` (4x) as a hard ceiling against memory exhaustion; a message
beyond it is refused by gRPC with RESOURCE_EXHAUSTED before any of this code runs.

Every non-OK answer carries a ``google.rpc.Status`` with a ``CallError`` detail (stable code,
decision with reasons and decision id, upstream status) in ``grpc-status-details-bin``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, message
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.config import Settings
from sidecar.health_listener import HealthListener
from sidecar.identity import CallContext, WorkloadIdentity
from sidecar.listeners import UnixSocketClaim, claim_unix_socket, listening
from sidecar.model_calls import ModelCall
from sidecar.pipeline import CallResult, Mediator, TaskResult, ToolCall
from sidecar.policy import Decision, PolicyEngine
from sidecar.tasks import Task
from sidecar.workers import WorkerRole, WorkersStatus

__all__ = ["SERVICE_NAME", "SidecarServer", "mtls_server_credentials"]

log = logging.getLogger(__name__)

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
    )


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
    """The ``agentsidecar.v1.Sidecar`` handlers: decode, run the mediator, encode."""

    def __init__(self, mediator: Mediator, max_request_bytes: int) -> None:
        self._mediator = mediator
        self._max = max_request_bytes

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
        result = await self._mediator.call_model(
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
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        call = asyncio.ensure_future(
            self._mediator.call_model(
                "StreamModel",
                dataclasses.replace(request, stream=True),
                context=_call_context(context),
                time_remaining=context.time_remaining(),
                emit=lambda kind, value: queue.put_nowait((kind, value)),
            )
        )
        call.add_done_callback(lambda _: queue.put_nowait(("end", None)))
        first: Any = None
        try:
            while True:
                kind, value = await queue.get()
                if kind == "start":
                    first = decision_message(value)
                elif kind == "chunk":
                    yield sidecar_pb2.ModelChunk(
                        decision=first, chunk_json=json.dumps(value, separators=(",", ":"))
                    )
                    first = None
                else:
                    break
        finally:
            if not call.done():
                call.cancel()
        result = call.result()
        if result.status != grpc.StatusCode.OK:
            await _abort(context, result)
        yield sidecar_pb2.ModelChunk(decision=first, usage=_usage_message(result))

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
        )

    async def _decode(self, rpc: str, message_type: Any, raw: bytes, context: Any) -> Any:
        """The request message, or an audited INVALID_ARGUMENT abort (too large, undecodable)."""
        if len(raw) > self._max:
            result = await self._mediator.reject(
                rpc,
                "request_too_large",
                f"request is {len(raw)} bytes; the limit is {self._max} (server.max_request_bytes)",
            )
            await _abort(context, result)
        try:
            return message_type.FromString(raw)
        except message.DecodeError:
            result = await self._mediator.reject(
                rpc, "malformed_request", f"the request is not a valid {rpc} message"
            )
            await _abort(context, result)
            raise

    async def start_task(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode("StartTask", sidecar_pb2.StartTaskRequest, raw, context)
        result = await self._mediator.task_rpc(
            "StartTask", _call_context(context), intent=request.intent, ttl_s=request.ttl_s
        )
        return await self._task_answer(result, context)

    async def end_task(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await self._decode("EndTask", sidecar_pb2.EndTaskRequest, raw, context)
        result = await self._mediator.task_rpc(
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
        result = await self._mediator.call(
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


def mtls_server_credentials(
    identity: WorkloadIdentity, trust_domains: tuple[str, ...] | list[str]
) -> grpc.ServerCredentials:
    """TLS with client certificates required, from the sidecar's X.509-SVID, re-read after
    each rotation; clients are verified against the bundles of ``trust_domains`` (default:
    the sidecar's own)."""
    trusted = list(trust_domains) or None

    def configuration() -> Any:
        snapshot = identity.snapshot()
        roots = snapshot.bundle_pem(trusted or [snapshot.trust_domain])
        return grpc.ssl_server_certificate_configuration(
            [(snapshot.key_pem(), snapshot.chain_pem())], root_certificates=roots
        )

    seen = {"rotations": identity.rotations}

    def fetch() -> Any:
        if identity.rotations == seen["rotations"]:
            return None
        try:
            config = configuration()
        except Exception:  # an expired snapshot: keep serving the last configuration
            log.exception("cannot rotate the mTLS certificate")
            return None
        seen["rotations"] = identity.rotations
        return config

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )


async def _abort(context: grpc.aio.ServicerContext, result: CallResult) -> None:
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


class SidecarServer:
    """Owns the grpc.aio server and its listeners.

    Health is NOT_SERVING until the Workload API has delivered the first SVID, and again
    whenever the cached SVID has expired without a replacement, the engine cannot decide, or
    audit records can no longer be written.
    """

    def __init__(
        self,
        settings: Settings,
        mediator: Mediator,
        identity: WorkloadIdentity | None = None,
        engine: PolicyEngine | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self._settings = settings
        self._mediator = mediator
        self._identity = identity
        self._engine = engine
        self._role = role or WorkerRole()
        self._health_task: asyncio.Task[None] | None = None
        limit = settings.server.max_request_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit * 4 + 4096),
                # Shared by the workers; else a port in use fails the start.
                ("grpc.so_reuseport", 1 if self._role.shared else 0),
            ]
        )
        self._server.add_generic_rpc_handlers((SidecarService(mediator, limit).handlers(),))
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if settings.server.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self._server,
            )
        self.addresses: list[str] = []
        self._claims: list[UnixSocketClaim] = []
        self.probe_listener: HealthListener | None = None
        try:
            for address in settings.server.listen:
                if address.startswith("unix:") and not self._role.primary:
                    continue  # a unix socket is served by worker 0 alone
                self.addresses.append(self._bind(address))
            if settings.server.health_listen and self._role.primary:  # the kubelet's probes
                with listening("server.health_listen", settings.server.health_listen):
                    self.probe_listener = HealthListener(self.health, settings.server.health_listen)
        except BaseException:
            self.release()
            raise

    def _bind(self, address: str) -> str:
        with listening("server.listen", address):
            if address.startswith("unix:"):
                return self._bind_unix(Path(address.removeprefix("unix://").removeprefix("unix:")))
            if self._settings.identity.mode == "mtls":
                port = self._server.add_secure_port(address, self._mtls_credentials())
            else:
                port = self._server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"cannot listen on {address}")
            return f"{address.rpartition(':')[0]}:{port}"

    def _bind_unix(self, path: Path) -> str:
        # Never take over a socket a live sidecar serves: held until this process stops.
        claim = claim_unix_socket(path, "server.listen")
        self._claims.append(claim)
        if self._settings.identity.mode == "mtls":
            self._server.add_secure_port(f"unix:{path}", self._mtls_credentials())
        else:
            self._server.add_insecure_port(f"unix:{path}")
        # Before the server listens: who may connect is the file's mode and group.
        restrict_socket(path, self._settings.server.socket_mode, self._settings.server.socket_group)
        return f"unix:{path}"

    def release(self) -> None:
        """Give up the claims on the unix sockets (after stopping, or a failed start)."""
        for claim in self._claims:
            claim.release()
        self._claims.clear()

    def _mtls_credentials(self) -> grpc.ServerCredentials:
        assert self._identity is not None
        return mtls_server_credentials(self._identity, self._settings.identity.trust_domains)

    def _serving(self) -> bool:
        """Ready: the engine can decide (OPA: bundles active), audit records can be written,
        and, with SPIFFE identity, a current SVID is held. Blocking (asks OPA): runs off the
        event loop."""
        if self._engine is not None and not self._engine.healthy():
            return False
        if not self._mediator.audit_alive():
            return False
        if self._role.shared:  # every worker runs (a dead one is being restarted)
            status = WorkersStatus.read(self._settings.state.dir)
            if status is not None and not status.complete:
                return False
        if self._identity is None:
            return True
        try:
            self._identity.snapshot()
        except Exception:
            return False
        return self._identity.ready

    async def _track_health(self) -> None:
        current = None
        while True:
            try:
                serving = await asyncio.to_thread(self._serving)
            except Exception:  # the check itself failed: not serving, and say why
                log.exception("health check failed")
                serving = False
            if serving != current:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in ("", SERVICE_NAME):
                    await self.health.set(service, status)
                current = serving
                log.info("health", extra={"serving": serving})
            await asyncio.sleep(0.05 if not serving else 0.5)

    async def start(self) -> None:
        await self._server.start()
        if self.probe_listener is not None:
            await self.probe_listener.start()
        self._health_task = asyncio.create_task(self._track_health())
        await asyncio.sleep(0)
        log.info("listening", extra={"addresses": self.addresses, "pid": os.getpid()})

    async def stop(self, grace_s: float | None = None) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        grace = self._settings.server.grace_s if grace_s is None else grace_s
        if self.probe_listener is not None:
            await self.probe_listener.stop(0)
        await self._server.stop(grace)
        self.release()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def restrict_socket(path: Path, mode: str, group: str) -> None:
    """Give the unix socket at ``path`` its configured mode and group (connecting needs write
    permission on it, so this decides who may call)."""
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"server.socket_group: no group {group!r}") from None
        os.chown(path, -1, gid)
    os.chmod(path, int(mode, 8))


async def serve_until_signalled(server: Any, on_hup: Any = None, on_started: Any = None) -> None:
    """Start ``server`` (anything with async ``start`` and ``stop``: the whole sidecar), then
    stop it gracefully on SIGTERM or SIGINT; SIGHUP calls ``on_hup``; ``on_started`` is
    called once it serves."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await server.start()
    if on_started is not None:
        on_started()
    await stop.wait()
    log.info("shutting down")
    await server.stop()
