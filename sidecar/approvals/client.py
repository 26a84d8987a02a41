"""A blocking client of the approvals admin API, for the CLI and for integrations.

    with ApprovalsClient("unix:///var/run/agent-sidecar/approvals.sock", approver="alice") as c:
        for approval in c.list(["pending"]):
            c.approve(approval.id, reason="refund confirmed with the customer")

Over TCP the API requires mTLS: pass ``tls`` channel credentials carrying the approver's
X.509-SVID (see :func:`svid_credentials`) and ``server_name``, a DNS SAN of the sidecar's SVID.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from sidecar._proto.agentsidecar.v1 import (
    a2a_pb2,
    a2a_pb2_grpc,
    approvals_pb2,
    approvals_pb2_grpc,
    mcp_pb2,
    mcp_pb2_grpc,
)
from sidecar.errors import SidecarError

__all__ = ["AdminCallError", "ApprovalsClient", "svid_credentials"]


class AdminCallError(SidecarError):
    """The admin API refused or failed a request; ``status`` is the gRPC status code."""

    def __init__(self, message: str, status: grpc.StatusCode) -> None:
        super().__init__(message)
        self.status = status


def svid_credentials(
    *,
    cert: Path | None = None,
    key: Path | None = None,
    bundle: Path | None = None,
    workload_api: str = "",
) -> grpc.ChannelCredentials:
    """mTLS credentials from PEM files, or from the approver's own Workload API."""
    if workload_api:
        from cryptography.hazmat.primitives import serialization
        from spiffe import WorkloadApiClient

        socket = workload_api if "://" in workload_api else f"unix://{workload_api}"
        with WorkloadApiClient(socket_path=socket) as client:
            context = client.fetch_x509_context()
        svid = context.default_svid
        pem = serialization.Encoding.PEM
        chain = b"".join(c.public_bytes(pem) for c in svid.cert_chain)
        private = svid.private_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        roots = b"".join(
            c.public_bytes(pem)
            for b in context.x509_bundle_set.bundles.values()
            for c in b.x509_authorities
        )
        return grpc.ssl_channel_credentials(roots, private, chain)
    if not (cert and key and bundle):
        raise SidecarError("mTLS needs --cert, --key and --bundle, or --workload-api")
    return grpc.ssl_channel_credentials(bundle.read_bytes(), key.read_bytes(), cert.read_bytes())


class ApprovalsClient:
    def __init__(
        self,
        target: str,
        *,
        approver: str = "",
        tls: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if tls is not None:
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self._channel = grpc.secure_channel(target, tls, options=options)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = approvals_pb2_grpc.ApprovalsStub(self._channel)
        self._mcp = mcp_pb2_grpc.McpDefinitionsStub(self._channel)
        self._a2a = a2a_pb2_grpc.A2aCardsStub(self._channel)
        self._metadata = (("x-approver", approver),) if approver else ()
        self._timeout = timeout_s

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise AdminCallError(exc.details() or exc.code().name, exc.code()) from None  # type: ignore[attr-defined]

    def list(self, states: Sequence[str] = (), limit: int = 100) -> list[Any]:
        request = approvals_pb2.ListApprovalsRequest(states=list(states), limit=limit)
        return list(self._call(self._stub.List, request).approvals)

    def get(self, approval_id: str) -> Any:
        return self._call(self._stub.Get, approvals_pb2.GetApprovalRequest(id=approval_id))

    def approve(self, approval_id: str, *, reason: str) -> Any:
        request = approvals_pb2.DecideApprovalRequest(id=approval_id, reason=reason)
        return self._call(self._stub.Approve, request)

    def deny(self, approval_id: str, *, reason: str) -> Any:
        request = approvals_pb2.DecideApprovalRequest(id=approval_id, reason=reason)
        return self._call(self._stub.Deny, request)

    def mcp_definitions(self, *, changed_only: bool = False) -> list[Any]:
        """MCP tool definitions against their pins (the same admin listener)."""
        request = mcp_pb2.ListDefinitionsRequest(changed_only=changed_only)
        return list(self._call(self._mcp.List, request).definitions)

    def mcp_accept(self, name: str, *, hash: str, reason: str) -> Any:
        """Pin ``name`` to the definition with ``hash`` (the one reviewed)."""
        request = mcp_pb2.AcceptDefinitionRequest(name=name, hash=hash, reason=reason)
        return self._call(self._mcp.Accept, request)

    def a2a_cards(self, *, changed_only: bool = False) -> list[Any]:
        """A2A peer cards against their pins (the same admin listener)."""
        request = a2a_pb2.ListCardsRequest(changed_only=changed_only)
        return list(self._call(self._a2a.List, request).cards)

    def a2a_accept(self, peer: str, *, digest: str, reason: str) -> Any:
        """Pin ``peer`` to the card with ``digest`` (the one reviewed)."""
        request = a2a_pb2.AcceptCardRequest(peer=peer, digest=digest, reason=reason)
        return self._call(self._a2a.Accept, request)

    def watch(self) -> Iterator[Any]:
        """Events as they happen (the pending approvals first); blocks until closed."""
        stream = self._stub.Watch(approvals_pb2.WatchApprovalsRequest(), metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise AdminCallError(exc.details() or "", exc.code()) from None  # type: ignore[attr-defined]
        finally:
            stream.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ApprovalsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
