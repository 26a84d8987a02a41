"""The McpDefinitions admin service: list tool definitions against their pins, and accept a
changed one (audited). Served on the approvals listener, behind its authentication."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from sidecar._proto.agentsidecar.v1 import mcp_pb2, mcp_pb2_grpc
from sidecar.approvals.admin import authenticated
from sidecar.audit import AuditError, AuditSink
from sidecar.mcp.catalog import Entry
from sidecar.mcp.gateway import McpGateway
from sidecar.state import StateError
from sidecar.state.offloop import off_loop

__all__ = ["McpDefinitionsService", "register"]

log = logging.getLogger(__name__)

Authenticate = Callable[[grpc.aio.ServicerContext], str]


def _message(entry: Entry, pinned_by: str = "", pinned_at_ns: int = 0) -> mcp_pb2.Definition:
    upstream_view = entry.body | {"name": entry.name}
    return mcp_pb2.Definition(
        name=entry.full,
        hash=entry.hash,
        pinned_hash=entry.pinned_hash,
        changed=entry.changed,
        pinned_by=pinned_by,
        pinned_at_ns=pinned_at_ns,
        definition_json=json.dumps(upstream_view, sort_keys=True),
    )


class McpDefinitionsService(mcp_pb2_grpc.McpDefinitionsServicer):
    def __init__(self, gateway: McpGateway, authenticate: Authenticate, audit: AuditSink) -> None:
        self._gateway = gateway
        self._authenticate = authenticate
        self._audit = audit

    async def _operator(self, context: grpc.aio.ServicerContext) -> str:
        return await authenticated(self._authenticate, context)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._operator(context)
        entries = await self._gateway.catalog.entries("tool")
        pins = await off_loop(self._gateway.pins.all)
        out = []
        for entry in sorted(entries, key=lambda e: e.full):
            if request.changed_only and not entry.changed:
                continue
            pin = pins.get(entry.full)
            out.append(_message(entry, pin.pinned_by if pin else "", pin.pinned_ns if pin else 0))
        return mcp_pb2.ListDefinitionsResponse(definitions=out)

    async def Accept(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        operator = await self._operator(context)
        if not request.name or not request.hash or not request.reason.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name, hash and reason are required"
            )
        entry = await self._gateway.catalog.find("tool", request.name)
        if entry is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no MCP tool {request.name!r} is listed now"
            )
        assert entry is not None
        if entry.hash != request.hash:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the definition of {request.name} is now {entry.hash}, not the {request.hash} "
                "you reviewed: review it again",
            )
        now = time.time_ns()
        record = {
            "record_version": 1,
            "type": "mcp_definition",
            "time": datetime.fromtimestamp(now / 1e9, UTC).isoformat(),
            "time_ns": now,
            "event": "accepted",
            "name": entry.full,
            # (not "hash": that names the record's own place in the hash chain)
            "definition_hash": entry.hash,
            "previous_definition_hash": entry.pinned_hash,
            "actor": operator,
            "reason": request.reason.strip()[:1000],
        }
        try:
            # On record first: an accept that cannot be audited does not happen.
            await off_loop(self._audit.write, record)
            pin = await self._gateway.accept(entry.full, f"{operator}")
        except (AuditError, StateError) as exc:
            code = "audit_unavailable" if isinstance(exc, AuditError) else "state_unavailable"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{code}: {exc}")
            raise AssertionError("unreachable") from exc
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise AssertionError("unreachable") from exc
        log.info("MCP tool definition accepted", extra={"tool": entry.full, "actor": operator})
        accepted = dataclasses.replace(entry, pinned_hash=pin.hash)
        return _message(accepted, pin.pinned_by, pin.pinned_ns)


def register(
    gateway: McpGateway, audit: AuditSink
) -> Callable[[grpc.aio.Server, Authenticate], None]:
    def add(server: grpc.aio.Server, authenticate: Authenticate) -> None:
        mcp_pb2_grpc.add_McpDefinitionsServicer_to_server(
            McpDefinitionsService(gateway, authenticate, audit), server
        )

    return add
