"""The approver-facing admin API (``agentsidecar.v1.Approvals``) on its own listener.

Never served on the agent API's listener. Who may call it:

- ``unix:///PATH``: whoever can open the socket file (``approvals.socket_mode``, default
  0600: the sidecar's own user). Put it on a volume the agent container does not mount. The
  approver's name is what the client states in ``x-approver`` metadata, recorded as
  ``local:NAME``: the socket's permissions are the authentication.
- ``HOST:PORT``: mTLS. The client presents an X.509-SVID from a trusted trust domain, and its
  SPIFFE ID must be listed in ``approvals.approvers``; anything else is PERMISSION_DENIED.

Either way an approver can never decide a request they are a party to (``self_approval``: they
made or delegated it, or it acts for them as the end user; the broker's rule), and every
decision, and every refused attempt, is an audit record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from sidecar._proto.agentsidecar.v1 import approvals_pb2, approvals_pb2_grpc
from sidecar.approvals.broker import ApprovalBroker
from sidecar.approvals.errors import ApproverRefused
from sidecar.approvals.links import InvalidApprovalId
from sidecar.approvals.model import STATES, Approval
from sidecar.audit import AuditError
from sidecar.config import Settings
from sidecar.identity import CallContext, IdentityError, MtlsAttestor, WorkloadIdentity
from sidecar.state import StateError
from sidecar.state.offloop import off_loop

__all__ = ["APPROVALS_SERVICE", "AdminServer", "approval_message"]

log = logging.getLogger(__name__)

APPROVALS_SERVICE = approvals_pb2.DESCRIPTOR.services_by_name["Approvals"].full_name
_LOCAL_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
_REFUSAL_STATUS = {
    "self_approval": grpc.StatusCode.PERMISSION_DENIED,
    "not_an_approver": grpc.StatusCode.PERMISSION_DENIED,
    "not_pending": grpc.StatusCode.FAILED_PRECONDITION,
    "approval_unknown": grpc.StatusCode.NOT_FOUND,
    "reason_required": grpc.StatusCode.INVALID_ARGUMENT,
}


def approval_message(approval: Approval, url: str = "") -> approvals_pb2.Approval:
    """The admin API's view of ``approval``; ``url`` its console page ("" without one)."""
    view = approval.arguments
    return approvals_pb2.Approval(
        id=approval.id,
        state=approval.state,
        subject=approval.subject,
        delegation=list(approval.delegation),
        action_kind=approval.action.get("kind", ""),
        action_name=approval.action.get("name", ""),
        operation=approval.action.get("operation", ""),
        target=approval.action.get("target", ""),
        arguments_json=json.dumps(view.get("value", {}), sort_keys=True),
        argument_names=list(view.get("keys", [])),
        task_id=approval.task_id,
        reasons=list(approval.reasons),
        approvers=list(approval.approvers),
        policy_revision=approval.policy_revision,
        digest=approval.digest,
        decision_id=approval.decision_id,
        created_at_ns=approval.created_at_ns,
        expires_at_ns=approval.expires_at_ns,
        decided_by=approval.decided_by,
        decided_at_ns=approval.decided_at_ns,
        decision_reason=approval.decision_reason,
        used_at_ns=approval.used_at_ns,
        used_by=approval.used_by,
        url=url,
    )


class ApprovalsService(approvals_pb2_grpc.ApprovalsServicer):
    def __init__(
        self,
        broker: ApprovalBroker,
        authenticate: Callable[[grpc.aio.ServicerContext], str],
        record: Callable[[str, Approval | None, Mapping[str, Any], str], None],
    ) -> None:
        self._broker = broker
        self._authenticate = authenticate
        self._record = record

    def _message(self, approval: Approval) -> approvals_pb2.Approval:
        try:
            url = self._broker.url(approval.id)
        except InvalidApprovalId:  # not one this sidecar made: shown, never linked
            url = ""
        return approval_message(approval, url)

    async def _approver(self, context: grpc.aio.ServicerContext) -> str:
        return await authenticated(self._authenticate, context)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._approver(context)
        unknown = [s for s in request.states if s not in STATES]
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown state {unknown[0]!r} (states: {', '.join(STATES)})",
            )
        limit = min(request.limit or 100, 1000)
        approvals = await off_loop(self._broker.list, list(request.states), limit)
        return approvals_pb2.ListApprovalsResponse(approvals=[self._message(a) for a in approvals])

    async def Get(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._approver(context)
        approval = await off_loop(self._broker.get, request.id)
        if approval is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no approval {request.id!r}")
        assert approval is not None
        return self._message(approval)

    async def Approve(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._decide(request, context, approve=True)

    async def Deny(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._decide(request, context, approve=False)

    async def _decide(
        self, request: Any, context: grpc.aio.ServicerContext, *, approve: bool
    ) -> Any:
        approver = await self._approver(context)
        try:
            approval = await off_loop(
                self._broker.decide,
                request.id,
                approve=approve,
                approver=approver,
                reason=request.reason,
            )
        except ApproverRefused as exc:
            log.warning(
                "approval refused",
                extra={"approval_id": request.id, "approver": approver, "code": exc.code},
            )
            await off_loop(
                self._record,
                "refused",
                await off_loop(self._broker.get, request.id),
                {"actor": approver, "code": exc.code, "wanted": "approve" if approve else "deny"},
                request.id,
            )
            await context.abort(_REFUSAL_STATUS[exc.code], f"{exc.code}: {exc}")
            raise AssertionError("unreachable") from exc
        except (AuditError, StateError) as exc:
            # Nothing changed: a decision that cannot be recorded does not happen.
            log.error("approval decision not recorded", extra={"approval_id": request.id})
            code = "audit_unavailable" if isinstance(exc, AuditError) else "state_unavailable"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{code}: {exc}")
            raise AssertionError("unreachable") from exc
        return self._message(approval)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._approver(context)
        queue = self._broker.subscribe()
        try:
            for approval in await off_loop(self._broker.list, ["pending"]):
                yield approvals_pb2.ApprovalEvent(type="pending", approval=self._message(approval))
            while True:
                event, approval = await queue.get()
                yield approvals_pb2.ApprovalEvent(type=event, approval=self._message(approval))
        finally:
            self._broker.unsubscribe(queue)


async def authenticated(
    authenticate: Callable[[grpc.aio.ServicerContext], str], context: grpc.aio.ServicerContext
) -> str:
    """Who is calling the admin listener, or the call ends: PERMISSION_DENIED for someone
    who may not, UNAUTHENTICATED for someone who could not be attested."""
    try:
        return authenticate(context)
    except PermissionError as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except IdentityError as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{exc.code}: {exc}")
    raise AssertionError("unreachable")


class AdminServer:
    """The admin listener: its own grpc.aio server, so that no agent-API handler or
    credential is shared with it."""

    def __init__(
        self,
        settings: Settings,
        broker: ApprovalBroker,
        identity: WorkloadIdentity | None,
        record: Callable[[str, Approval | None, Mapping[str, Any], str], None],
    ) -> None:
        from sidecar.identity.server_tls import mtls_server_credentials
        from sidecar.listeners import UnixSocketClaim, claim_unix_socket

        self._settings = settings
        self.claim: UnixSocketClaim | None = None
        address = settings.approvals_listen
        self._server = grpc.aio.server()
        if address.startswith("unix:"):
            self._socket: Path | None = Path(address.removeprefix("unix://").removeprefix("unix:"))
            authenticate = _local_approver
        else:
            self._socket = None
            if identity is None:
                raise IdentityError(
                    "approvals.listen is HOST:PORT (mTLS) but the sidecar has no Workload API",
                    code="identity_not_ready",
                )
            attestor = MtlsAttestor(identity, settings.identity.trust_domains)
            allowed = frozenset(settings.approvals.approvers)

            def authenticate(context: grpc.aio.ServicerContext) -> str:
                subject = attestor.attest(_call_context(context))
                if subject.spiffe_id not in allowed:
                    raise PermissionError(
                        f"not_an_approver: {subject.spiffe_id} is not in approvals.approvers"
                    )
                return subject.spiffe_id

        self.authenticate = authenticate
        approvals_pb2_grpc.add_ApprovalsServicer_to_server(
            ApprovalsService(broker, authenticate, record), self._server
        )
        if self._socket is not None:
            # Never take over the socket of a live sidecar (sidecar.listeners; held until exit).
            self.claim = claim_unix_socket(self._socket, "approvals.listen")
            # No moment where others could connect: created under umask 077, then set to
            # approvals.socket_mode once serving.
            previous = os.umask(0o077)
            try:
                self._server.add_insecure_port(f"unix:{self._socket}")
            finally:
                os.umask(previous)
            self.address = f"unix:{self._socket}"
        else:
            assert identity is not None
            creds = mtls_server_credentials(identity, settings.identity.trust_domains)
            port = self._server.add_secure_port(address, creds)
            if port == 0:
                raise OSError(f"cannot listen on {address} (approvals.listen)")
            self.address = f"{address.rpartition(':')[0]}:{port}"

    def add_service(
        self, register: Callable[[grpc.aio.Server, Callable[[grpc.aio.ServicerContext], str]], None]
    ) -> None:
        """Serve another operator service here, behind the same authentication (before
        :meth:`start`)."""
        register(self._server, self.authenticate)

    async def start(self) -> None:
        await self._server.start()
        if self._socket is not None:
            os.chmod(self._socket, int(self._settings.approvals.socket_mode, 8))
        log.info("approvals API listening", extra={"address": self.address})

    async def stop(self, grace_s: float = 0) -> None:
        await self._server.stop(grace_s)
        if self.claim is not None:
            self.claim.release()
        await asyncio.sleep(0)


def _call_context(context: grpc.aio.ServicerContext) -> CallContext:
    return CallContext(
        metadata=tuple(context.invocation_metadata() or ()),
        peer=context.peer(),
        auth_context=context.auth_context() or {},
    )


def _local_approver(context: grpc.aio.ServicerContext) -> str:
    names = [v for k, v in context.invocation_metadata() or () if k == "x-approver"]
    name = names[0] if names else ""
    name = name.decode() if isinstance(name, bytes) else name
    name = name.removeprefix("local:")  # the form the sidecar prints (local:NAME) is accepted
    if not _LOCAL_NAME.fullmatch(name):
        raise PermissionError(
            "name yourself: x-approver metadata (agent-sidecar approvals --as NAME, or "
            "local:NAME) of letters, digits and ._@+-; it is recorded as local:NAME"
        )
    return f"local:{name}"
