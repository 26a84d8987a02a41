"""MCP calls: ``tools/call``, ``prompts/get`` and ``resources/read`` through the guarded
path, and the list phase that decides what ``tools/list`` (prompts, resources) shows.

The action: ``kind: "mcp"``, ``name: "SERVER.tool"`` (prompt, or ``SERVER.`` + resource
URI), ``phase``, ``method``, the operation configured for the tool (default ``act``; prompts
and resources ``read``), the upstream's annotations as untrusted hints, and for tools the
definition's hash against its pin. The relay is one request on the upstream's shared session.

An adapter: it receives the guarded path (sidecar/calls/guarded.py), which does the rest.
It lives beside the MCP endpoint it serves, so the calls package never imports MCP.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from sidecar.audit import CallRecord, payload_view, result_view
from sidecar.calls.common import CallResult, Facts, Stop, action_record
from sidecar.calls.decide import Decider
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.relaying import RelayGate
from sidecar.classify import classify, redact
from sidecar.identity import CallContext, IdentityError
from sidecar.ids import new_decision_id
from sidecar.mcp.catalog import Catalog
from sidecar.mcp.entry import Entry, split_name
from sidecar.mcp.errors import UpstreamMcpUnavailable, UpstreamRpcError
from sidecar.mcp.input_required import strip_sidecar_meta
from sidecar.mcp.jsonrpc import INTERNAL_ERROR, SIDECAR_CODES
from sidecar.mcp.settings import McpServerSettings
from sidecar.outcomes import status_for
from sidecar.policy import Action, build_input
from sidecar.policy.decision import ENGINE_FAILURES
from sidecar.relay.scrub import Scrubber

__all__ = ["METHOD_KINDS", "McpCall", "McpCalls"]

log = logging.getLogger("sidecar.pipeline")

# The methods that act, and the kind of catalog entry each names.
METHOD_KINDS = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}
# Decisions of the list phase kept (per policy revision, subject, user, task and definition).
_LIST_CACHE_MAX = 10_000


@dataclass(frozen=True)
class McpCall:
    """One acting MCP request from the agent, decoded."""

    method: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    task_id: str = ""
    intent: str = ""
    approval_id: str = ""
    # True: the agent asked not to wait; a text: why the sidecar does not wait (its setting).
    no_wait: bool | str = False
    # Why ``approval_id`` (from a requestState) cannot be this call's: the state was issued
    # for another request. The call is refused (approval_mismatch) once its caller is known.
    mismatch: str = ""
    # The person at the client declined (or dismissed) the approval page: the call ends with
    # approval_required and the approval's id, and never uses the approval, even a granted one.
    declined: bool = False
    # A retry of an input_required answer (a requestState): counted against the task only
    # when it is relayed (the first round counted the call; a pending round is not another).
    retry: bool = False


class McpCalls:
    """MCP methods that act, and the list phase, on the catalog of the MCP servers."""

    def __init__(
        self,
        path: GuardedPath,
        gate: RelayGate,
        decider: Decider,
        catalog: Catalog,
        servers: Mapping[str, McpServerSettings],
    ) -> None:
        self._path = path
        self._gate = gate
        self._decider = decider
        self._catalog = catalog
        self._servers = servers
        # List-phase decisions, keyed by policy revision, caller and entry.
        self._list_decisions: dict[Any, str] = {}

    async def reject(self, rpc: str, code: str, message: str) -> CallResult:
        """A message refused before it could be decoded: audited like every call."""
        return await self._path.reject(rpc, code, message)

    async def refuse(
        self, method: str, name: str, context: CallContext, code: str, message: str
    ) -> CallResult:
        """A request refused before its decision (a bad ``requestState``): audited with the
        caller attested first, so a probing attempt's record names who made it."""

        async def step(record: CallRecord, deadline: float) -> CallResult:
            record.action = {"kind": "mcp", "name": name, "method": method}
            self._path.attest(record, context)  # an unattested caller is refused as such
            raise Stop(code, message)

        return await self._path.run(f"MCP {method}", None, step)

    async def call_mcp(
        self,
        call: McpCall,
        *,
        context: CallContext,
        time_remaining: float | None,
    ) -> CallResult:
        return await self._path.run(
            f"MCP {call.method}",
            time_remaining,
            lambda record, deadline: self._run_mcp(record, call, context, deadline),
        )

    async def _run_mcp(
        self,
        record: CallRecord,
        call: McpCall,
        context: CallContext,
        deadline: float,
    ) -> CallResult:
        catalog = self._catalog
        trace = self._path.begin(record, context, call.intent)
        record.action = {"kind": "mcp", "name": call.name, "method": call.method}
        server, name = split_name(call.name)
        if server not in catalog.upstreams:
            raise Stop("unknown_tool", f"no MCP server {server or call.name!r}")
        kind = METHOD_KINDS[call.method]
        entry = await self._mcp_entry(catalog, kind, call.name, server, name)
        subject, chain, user, task = await self._path.establish(
            record, context, trace, delegation_chain=(), task_id=call.task_id, count=not call.retry
        )
        arguments = call.arguments
        action = mcp_action(entry, "call", call.method, arguments)
        record.action = action_record(action, arguments) | {"method": call.method}
        facts = Facts(subject, chain, task, call.task_id, action, arguments, user)
        if call.mismatch:  # never rides the approval, never consumes it
            record.approval = {"id": call.approval_id, "refused": "approval_mismatch"}
            raise Stop("approval_mismatch", call.mismatch, approval_id=call.approval_id)
        if call.declined:  # the client's answer: no; the approval stays for a retry by id
            record.approval = {"id": call.approval_id, "declined": True}
            raise Stop(
                "approval_required",
                f"approval {call.approval_id} was not used: the client declined to open the "
                "approval page (retry with its id in _meta once it is approved)",
                approval_id=call.approval_id,
            )
        decided, common = await self._path.authorize(
            record,
            facts,
            acting=True,
            approval_id=call.approval_id,
            no_wait=call.no_wait,
            deadline=deadline,
            trace=trace,
            view_arguments=True,
        )
        decision = decided.decision
        log_level = decision.obligations.log
        if not decision.allowed:
            record.action["arguments"] = payload_view(arguments, log_level)
            raise Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)
        obligations = decision.obligations
        sent = redact(arguments, obligations.redact) if obligations.redact else arguments
        record.action["arguments"] = payload_view(sent, log_level)
        remaining = self._path.time_to_relay(deadline, common)
        params: dict[str, Any] = (
            {"uri": entry.name} if kind == "resource" else {"name": entry.name, "arguments": sent}
        )
        record.upstream = {"server": server, "method": call.method}
        upstream = catalog.upstreams[server]
        timeout = min(self._servers[server].timeout_s, remaining)
        # What the sidecar gave the server for good (stdio env_files), and below the call's
        # own credential: none of it comes back, in any common encoding.
        scrubber = Scrubber(upstream.secrets)
        if call.retry and call.task_id:  # the input_required retry that goes ahead counts
            await self._path.establish(
                record, context, trace, delegation_chain=(), task_id=call.task_id, count=True
            )
        await self._path.before_relay(record, common)
        t0 = time.perf_counter()
        try:
            headers = None
            target = self._servers[server].target
            if target:  # over HTTP: the target's credential on this call
                headers = {"X-Request-Id": record.decision_id}
                headers |= await self._gate.credential_headers(
                    target, obligations.credential, call.task_id, scrubber, user
                )
            async with self._gate.slots(f"mcp:{server}"):
                answer = await upstream.request(
                    call.method, params, timeout_s=timeout, headers=headers
                )
        except IdentityError as exc:
            record.relayed = False
            raise Stop("credential_unavailable", str(exc), **common) from exc
        except UpstreamRpcError as exc:
            record.relayed = True
            record.upstream["error"] = {"code": exc.code}
            error = upstream_error(exc.code, scrubber.value(str(exc)), scrubber.value(exc.data))
            return CallResult(
                record.decision_id,
                "upstream_error",
                status_for("upstream_error"),
                "the MCP server answered with an error",
                rpc_error=error,
                **common,
            )
        except UpstreamMcpUnavailable as exc:
            record.relayed = exc.reached
            # The message may quote the upstream (its status line, a header): never the
            # credential this call carried.
            raise Stop(exc.code, scrubber.text(str(exc)), **common) from None
        finally:
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
        record.relayed = True
        answer = scrubber.value(answer)
        if obligations.redact_response:
            answer = redact(answer, obligations.redact_response)
        body = json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
        record.upstream["result"] = result_view(body, "application/json", log_level)
        record.upstream["credentials_scrubbed"] = scrubber.count
        return CallResult(record.decision_id, "ok", grpc.StatusCode.OK, answer=answer, **common)

    @staticmethod
    async def _mcp_entry(catalog: Catalog, kind: str, full: str, server: str, name: str) -> Entry:
        """The catalog's entry for the call. A resource need not be listed (templates):
        its URI names it. An upstream that cannot list is unavailable, not unknown."""
        try:
            entry = await catalog.find(kind, full)
        except UpstreamMcpUnavailable as exc:
            raise Stop(exc.code, str(exc)) from exc
        except UpstreamRpcError as exc:
            raise Stop("upstream_error", f"the MCP server could not list: {exc}") from exc
        if entry is not None:
            return entry
        if kind == "resource" and name:
            return Entry(kind=kind, server=server, name=name, full=full, body={})
        raise Stop("unknown_tool", f"MCP server {server!r} lists no {kind} {name!r}")

    async def mcp_visible(
        self, context: CallContext, entries: list[Entry], method: str, *, task_id: str = ""
    ) -> tuple[CallResult, list[Entry]]:
        """The entries whose list-phase decision is not deny (one evaluation each, cached
        per policy revision and caller). One audit record names what was hidden."""
        started = time.perf_counter()
        record = CallRecord(
            decision_id=new_decision_id(), rpc=f"MCP {method}", time_ns=time.time_ns()
        )
        record.action = {"kind": "mcp", "name": method, "phase": "list"}
        shown: list[Entry] = []
        try:
            trace = self._path.begin(record, context, "")
            subject, _chain, user, task = await self._path.establish(
                record, context, trace, delegation_chain=(), task_id=task_id, count=False
            )
            cache = self._list_decisions
            if len(cache) > _LIST_CACHE_MAX:
                cache.clear()
            caller = (subject.spiffe_id, user.to_record()["sub"] if user else "", task_id)
            for entry in entries:
                acting = {"tool": "tools/call", "prompt": "prompts/get"}.get(
                    entry.kind, "resources/read"
                )
                key = (self._decider.revision, caller, entry.full, entry.hash, entry.pinned_hash)
                effect = cache.get(key)
                if effect is None:
                    input_doc = build_input(
                        request_id=record.decision_id,
                        time_ns=record.time_ns,
                        subject=subject,
                        action=mcp_action(entry, "list", acting, {}),
                        task=task.info(record.time_ns) if task is not None else None,
                        user=user,
                    )
                    decided = await self._decider.decide(input_doc, math.inf, entry.full)
                    effect = decided.decision.effect
                    if decided.decision.code not in ENGINE_FAILURES:
                        cache[key] = effect  # an engine failure is not remembered
                if effect != "deny":
                    shown.append(entry)
            record.upstream = {
                "method": method,
                "shown": len(shown),
                "hidden": sorted(e.full for e in entries if e not in shown)[:200],
            }
            result = CallResult(record.decision_id, "ok", grpc.StatusCode.OK)
        except Stop as stop:
            shown = []
            result = CallResult(record.decision_id, stop.code, status_for(stop.code), str(stop))
        except Exception:
            log.exception("internal error", extra={"decision_id": record.decision_id})
            shown = []
            result = CallResult(
                record.decision_id, "internal_error", status_for("internal_error"), "internal error"
            )
        return await self._path.finish(record, result, started), shown


def mcp_action(entry: Entry, phase: str, method: str, arguments: dict[str, Any]) -> Action:
    return Action(
        kind="mcp",
        name=entry.full,
        operation=entry.operation,  # type: ignore[arg-type]
        target=entry.server,
        arguments=arguments,
        data_classes=classify(arguments) if arguments else (),
        phase=phase,
        method=method,
        annotations=dict(entry.annotations),
        definition=entry.definition(),
    )


# What only the sidecar's own refusals carry in an error's data: an upstream's error never
# does, so it cannot pass for the sidecar's step-up (an approval to open, a link to phish with).
SIDECAR_DATA_KEYS = frozenset({"approval_id", "approval_url"})


def upstream_error(code: int, message: str, data: Any) -> dict[str, Any]:
    """An upstream's JSON-RPC error as relayed: intact, except that it cannot speak as the
    sidecar. A code in the sidecar's band (:data:`SIDECAR_CODES`) becomes -32603 with the
    upstream's code kept in ``data.upstream_code``; an approval id or link and the sidecar's
    ``_meta`` keys are dropped from its data."""
    error: dict[str, Any] = {"code": code, "message": message}
    if isinstance(data, dict):
        data = strip_sidecar_meta({k: v for k, v in data.items() if k not in SIDECAR_DATA_KEYS})
    if code in SIDECAR_CODES:
        error["code"] = INTERNAL_ERROR
        data = (data if isinstance(data, dict) else {"data": data} if data is not None else {}) | {
            "upstream_code": code
        }
    if data is not None:
        error["data"] = data
    return error
