"""The agent-side SDK: what an agent imports to call tools through its sidecar.

    from sidecar.client import SidecarClient, PolicyDenied, StepUpRequired

    with SidecarClient("unix:///run/agent-sidecar/agent.sock") as sidecar:
        task = sidecar.start_task("handle ticket 7", ttl_s=600)   # act calls need a task
        try:
            result = sidecar.call_tool("tickets.get", {"id": "7"}, task_id=task.task_id)
            print(result.json())
        except PolicyDenied as denied:
            print(denied.reasons, denied.decision_id)
        finally:
            sidecar.end_task(task.task_id)

A step-up call waits (within ``timeout_s``) for a human to approve it; with ``wait=False`` it
raises :class:`StepUpRequired` at once, and the same call retried with
``approval_id=exc.approval_id`` goes through once the approval is granted;
``exc.approval_url`` is the approval's page in the approvals console, for the human.

Exceptions (all carry ``code``, ``decision_id`` and ``reasons``; ``reasons`` is never empty:
a refusal without a policy decision, such as ``task_ended``, ``approval_used`` or
``approval_mismatch``, gives the sidecar's message as its reason)::

    SidecarCallError
    ├── PolicyDenied         PERMISSION_DENIED: policy said no (or could not say yes)
    ├── StepUpRequired       FAILED_PRECONDITION + approval_required: a human must approve
    ├── Unauthenticated      UNAUTHENTICATED: the sidecar could not attest this agent
    ├── InvalidRequest       INVALID_ARGUMENT / NOT_FOUND: fix the call, do not retry it
    ├── RateLimited          RESOURCE_EXHAUSTED from the sidecar (e.g. approval_rate_limited)
    ├── Unavailable          UNAVAILABLE / DEADLINE_EXCEEDED: the sidecar or upstream is down
    └── UpstreamError        any other status: the upstream answered with an error
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_status import rpc_status

from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.errors import SidecarError

__all__ = [
    "Decision",
    "InvalidRequest",
    "PeerResult",
    "PolicyDenied",
    "RateLimited",
    "SidecarCallError",
    "SidecarClient",
    "StepUpRequired",
    "Task",
    "ToolResult",
    "Unauthenticated",
    "Unavailable",
    "UpstreamError",
    "workload_api_jwt_svid",
]

_SERVICE = "/agentsidecar.v1.Sidecar/"


@dataclass(frozen=True)
class Decision:
    decision_id: str
    effect: str
    reasons: tuple[str, ...]
    code: str
    obligations: dict[str, Any]
    policy_revision: str
    approval_id: str
    # The approval's page in the approvals console ("" when none is configured).
    approval_url: str = ""

    @classmethod
    def from_message(cls, msg: sidecar_pb2.Decision) -> Decision:
        return cls(
            decision_id=msg.decision_id,
            effect=msg.effect,
            reasons=tuple(msg.reasons),
            code=msg.code,
            obligations=json.loads(msg.obligations_json) if msg.obligations_json else {},
            policy_revision=msg.policy_revision,
            approval_id=msg.approval_id,
            approval_url=msg.approval_url,
        )


@dataclass(frozen=True)
class Task:
    task_id: str
    intent: str
    owner: str
    state: str
    started_at_ns: int
    expires_at_ns: int
    ended_at_ns: int
    calls: int
    tokens: int

    @classmethod
    def from_message(cls, msg: sidecar_pb2.Task) -> Task:
        return cls(
            task_id=msg.task_id,
            intent=msg.intent,
            owner=msg.owner,
            state=msg.state,
            started_at_ns=msg.started_at_ns,
            expires_at_ns=msg.expires_at_ns,
            ended_at_ns=msg.ended_at_ns,
            calls=msg.calls,
            tokens=msg.tokens,
        )


@dataclass(frozen=True)
class ToolResult:
    decision: Decision
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class PeerResult:
    """A peer's answer (CallPeer) or one streamed event (StreamPeer; ``decision`` on the
    first only): its JSON-RPC ``result``, or its own A2A ``error`` object."""

    decision: Decision | None
    result: Any = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_message(cls, msg: Any) -> PeerResult:
        return cls(
            decision=Decision.from_message(msg.decision) if msg.HasField("decision") else None,
            result=json.loads(msg.result_json) if msg.result_json else None,
            error=json.loads(msg.error_json) if msg.error_json else None,
        )


class SidecarCallError(SidecarError):
    """A call the sidecar did not complete. ``status`` is the gRPC status code."""

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode,
        code: str,
        decision: Decision | None,
        upstream_status: int = 0,
        upstream_body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.decision = decision
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body

    @property
    def decision_id(self) -> str:
        return self.decision.decision_id if self.decision else ""

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why: the policy's reasons, else the refusal's message (never empty)."""
        if self.decision is not None and self.decision.reasons:
            return self.decision.reasons
        return (str(self),) if str(self) else ()


class PolicyDenied(SidecarCallError):
    pass


class StepUpRequired(SidecarCallError):
    """A human must approve: ``approval_id`` to retry with, ``approval_url`` the console
    page to send them to (``""`` without ``approvals.console_url``). The message names the
    page too, so whatever prints the error (a CLI, a log line) tells where to approve."""

    @property
    def approval_id(self) -> str:
        return self.decision.approval_id if self.decision else ""

    @property
    def approval_url(self) -> str:
        return self.decision.approval_url if self.decision else ""

    def __str__(self) -> str:
        message = super().__str__()
        url = self.approval_url
        if url and url not in message:
            return f"{message} (approve at {url})"
        return message


class Unauthenticated(SidecarCallError):
    pass


class InvalidRequest(SidecarCallError):
    pass


class RateLimited(SidecarCallError):
    pass


class Unavailable(SidecarCallError):
    pass


class UpstreamError(SidecarCallError):
    pass


class SidecarClient:
    """A small blocking client of the agent API (``127.0.0.1:PORT`` or ``unix:PATH``).

    Identity, to match the sidecar's ``identity.mode``: nothing (``pod``: the pod's SVID names
    the caller); ``jwt_svid``, a callable returning the agent's JWT-SVID for the sidecar's
    audience, sent as ``authorization: Bearer`` (``jwt``; see :func:`workload_api_jwt_svid`);
    or ``tls``, channel credentials carrying the agent's X.509-SVID, with ``server_name`` a
    DNS SAN of the sidecar's SVID (``mtls``).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 30.0,
        jwt_svid: Callable[[], str] | None = None,
        tls: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        user_header: str = "x-user-token",
    ) -> None:
        # A connection of its own (gRPC shares one between identical channels otherwise):
        # with server.workers, each client's connection may land on another worker.
        options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if tls is not None:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(target, tls, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._timeout = timeout_s
        self._jwt_svid = jwt_svid
        self._user_header = user_header
        self._call_tool = self._channel.unary_unary(
            _SERVICE + "CallTool",
            request_serializer=sidecar_pb2.CallToolRequest.SerializeToString,
            response_deserializer=sidecar_pb2.CallToolResponse.FromString,
        )
        self._check = self._channel.unary_unary(
            _SERVICE + "Check",
            request_serializer=sidecar_pb2.CheckRequest.SerializeToString,
            response_deserializer=sidecar_pb2.CheckResponse.FromString,
        )
        self._start_task = self._channel.unary_unary(
            _SERVICE + "StartTask",
            request_serializer=sidecar_pb2.StartTaskRequest.SerializeToString,
            response_deserializer=sidecar_pb2.Task.FromString,
        )
        self._call_peer = self._channel.unary_unary(
            _SERVICE + "CallPeer",
            request_serializer=sidecar_pb2.CallPeerRequest.SerializeToString,
            response_deserializer=sidecar_pb2.CallPeerResponse.FromString,
        )
        self._stream_peer = self._channel.unary_stream(
            _SERVICE + "StreamPeer",
            request_serializer=sidecar_pb2.CallPeerRequest.SerializeToString,
            response_deserializer=sidecar_pb2.PeerEvent.FromString,
        )
        self._end_task = self._channel.unary_unary(
            _SERVICE + "EndTask",
            request_serializer=sidecar_pb2.EndTaskRequest.SerializeToString,
            response_deserializer=sidecar_pb2.Task.FromString,
        )

    def call_peer(
        self, peer: str, operation: str, params: dict[str, Any], **options: Any
    ) -> PeerResult:
        """One A2A request to a configured peer (``operation``: the A2A method, e.g.
        ``SendMessage``, ``GetTask``; ``params`` its camelCase JSON params); options as for
        :meth:`call_tool` (task_id, intent, timeout_s, approval_id, wait, delegation_chain,
        user_token). The peer's own A2A error is returned in ``error``, not raised."""
        request, timeout_s, token = _peer_request(peer, operation, params, **options)
        answer = self._invoke(self._call_peer, request, timeout_s, token)
        return PeerResult.from_message(answer)

    def stream_peer(
        self, peer: str, operation: str, params: dict[str, Any], **options: Any
    ) -> Iterator[PeerResult]:
        """The same for SendStreamingMessage / SubscribeToTask: each event as it comes; a
        refusal, or a failure after some events, raises a :class:`SidecarCallError`."""
        request, timeout_s, token = _peer_request(peer, operation, params, **options)
        stream = self._invoke(self._stream_peer, request, timeout_s, token)
        try:
            for event in stream:
                yield PeerResult.from_message(event)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        finally:
            stream.cancel()

    def start_task(self, intent: str, *, ttl_s: int = 0) -> Task:
        """Start a task; its id goes with every call made for it (act calls need one)."""
        request = sidecar_pb2.StartTaskRequest(intent=intent, ttl_s=ttl_s)
        return Task.from_message(self._invoke(self._start_task, request, None))

    def end_task(self, task_id: str) -> Task:
        """End a task: its pending approvals and cached credentials are revoked."""
        request = sidecar_pb2.EndTaskRequest(task_id=task_id)
        return Task.from_message(self._invoke(self._end_task, request, None))

    def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        task_id: str = "",
        intent: str = "",
        timeout_s: float | None = None,
        approval_id: str = "",
        wait: bool = True,
        delegation_chain: Sequence[str] = (),
        user_token: str = "",
    ) -> ToolResult:
        """Call a tool; returns its result or raises a :class:`SidecarCallError` subclass.

        ``wait``: on step-up, wait (up to ``timeout_s``) for the approver; ``approval_id``:
        retry a stepped-up call with its granted approval; ``delegation_chain``: JWT-SVIDs of
        the agents that delegated this call, outermost first; ``user_token``: the token of
        the person the agent acts for (OIDC), verified by the sidecar (``input.user``)."""
        request = sidecar_pb2.CallToolRequest(
            tool=tool,
            arguments_json=_encode(arguments),
            task_id=task_id,
            intent=intent,
            approval_id=approval_id,
            no_wait=not wait,
            delegation_chain=list(delegation_chain),
        )
        response = self._invoke(self._call_tool, request, timeout_s, user_token)
        return ToolResult(
            decision=Decision.from_message(response.decision),
            status=response.upstream_status,
            content_type=response.content_type,
            body=response.body,
        )

    def check(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        task_id: str = "",
        intent: str = "",
        timeout_s: float | None = None,
        delegation_chain: Sequence[str] = (),
        user_token: str = "",
    ) -> Decision:
        """Ask what policy would decide; nothing is relayed. Returns allow, deny or step_up."""
        request = sidecar_pb2.CheckRequest(
            tool=tool,
            arguments_json=_encode(arguments),
            task_id=task_id,
            intent=intent,
            delegation_chain=list(delegation_chain),
        )
        answer = self._invoke(self._check, request, timeout_s, user_token)
        return Decision.from_message(answer.decision)

    def _invoke(
        self, method: Any, request: Any, timeout_s: float | None, user_token: str = ""
    ) -> Any:
        metadata: list[tuple[str, str]] = []
        if self._jwt_svid is not None:
            metadata.append(("authorization", f"Bearer {self._jwt_svid()}"))
        if user_token:
            metadata.append((self._user_header, user_token))
        try:
            return method(request, timeout=timeout_s or self._timeout, metadata=metadata or None)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def workload_api_jwt_svid(socket: str, audience: str) -> Callable[[], str]:
    """A ``jwt_svid`` callable: the agent's JWT-SVID for ``audience`` from its Workload API,
    fetched when needed and reused until 30 s before it expires."""
    from spiffe import WorkloadApiClient

    client = WorkloadApiClient(socket_path=socket if "://" in socket else f"unix://{socket}")
    cached: dict[str, Any] = {}

    def token() -> str:
        if not cached or cached["expiry"] - time.time() < 30:
            svid = client.fetch_jwt_svid(audience={audience})
            cached.update(token=svid.token, expiry=svid.expiry)
        return cached["token"]

    return token


def _peer_request(
    peer: str,
    operation: str,
    params: dict[str, Any],
    *,
    task_id: str = "",
    intent: str = "",
    timeout_s: float | None = None,
    approval_id: str = "",
    wait: bool = True,
    delegation_chain: Sequence[str] = (),
    user_token: str = "",
) -> tuple[sidecar_pb2.CallPeerRequest, float | None, str]:
    request = sidecar_pb2.CallPeerRequest(
        peer=peer,
        operation=operation,
        params_json=_encode(params),
        task_id=task_id,
        intent=intent,
        approval_id=approval_id,
        no_wait=not wait,
        delegation_chain=list(delegation_chain),
    )
    return request, timeout_s, user_token


def _encode(arguments: dict[str, Any] | None) -> str:
    return json.dumps(arguments or {}, separators=(",", ":"), allow_nan=False)


def _translate(exc: grpc.RpcError) -> SidecarCallError:
    status = exc.code()  # type: ignore[attr-defined]
    message = exc.details() or status.name  # type: ignore[attr-defined]
    code, decision, upstream_status, upstream_body = status.name.lower(), None, 0, b""
    rich = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if rich is not None:
        for detail in rich.details:
            error = sidecar_pb2.CallError()
            if detail.Unpack(error):
                code = error.code
                upstream_status, upstream_body = error.upstream_status, error.upstream_body
                if error.HasField("decision"):
                    decision = Decision.from_message(error.decision)
    kwargs = {
        "status": status,
        "code": code,
        "decision": decision,
        "upstream_status": upstream_status,
        "upstream_body": upstream_body,
    }
    S = grpc.StatusCode
    if code == "approval_required":
        return StepUpRequired(message, **kwargs)
    if code.endswith("_rate_limited"):
        return RateLimited(message, **kwargs)
    if upstream_status:
        return UpstreamError(message, **kwargs)
    cls: type[SidecarCallError] = {
        S.PERMISSION_DENIED: PolicyDenied,
        S.UNAUTHENTICATED: Unauthenticated,
        S.INVALID_ARGUMENT: InvalidRequest,
        S.NOT_FOUND: InvalidRequest,
        S.UNAVAILABLE: Unavailable,
        S.DEADLINE_EXCEEDED: Unavailable,
    }.get(status, UpstreamError)
    return cls(message, **kwargs)
