"""What each MCP method does at the sidecar's endpoint, whatever the transport revision:
the handshake and discovery answered by the sidecar itself, the lists aggregated and
filtered by policy, the acting methods through the guarded path, anything else refused.

Known methods are those below; every other method is refused (``method_not_allowed``, and
audited): nothing the agent sends reaches an upstream without a decision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import grpc
from mcp_types.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from sidecar import __version__
from sidecar.approvals.links import InvalidApprovalId, approval_url
from sidecar.calls.common import CallResult
from sidecar.config import Settings
from sidecar.identity import CallContext
from sidecar.mcp import jsonrpc
from sidecar.mcp.calls import METHOD_KINDS, McpCall, McpCalls
from sidecar.mcp.catalog import KINDS, Catalog
from sidecar.mcp.input_required import (
    declined,
    input_required,
    strip_sidecar_meta,
    supports_url_elicitation,
)
from sidecar.mcp.request_state import InvalidRequestState, OpenedState, StateSeal, load_state_key

__all__ = ["META_PREFIX", "SERVER_INFO", "Methods", "Reply"]

SERVER_INFO = {"name": "agent-sidecar", "version": __version__}
CAPABILITIES = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True, "subscribe": False},
}
# The agent's per-call facts for the sidecar, in the request's _meta.
META_PREFIX = "agent-sidecar.io/"
_LISTS = {
    "tools/list": "tool",
    "prompts/list": "prompt",
    "resources/list": "resource",
    "resources/templates/list": "template",
}
# Why a stepped-up call did not wait when the agent did not ask that.
NOT_WAITING = "mcp.wait_for_approval_s is 0: the sidecar does not wait for an approver"
# Why a 2026-07-28 step-up is answered at once: input_required, the client retries.
ANSWERED_INPUT_REQUIRED = "the answer is input_required: the client retries"
DECLINED = "the client declined to open the approval page"
# Answered by the sidecar with nothing to do (handshake-era housekeeping).
_NOOP = frozenset({"ping", "logging/setLevel"})


@dataclass(frozen=True)
class Reply:
    """A JSON-RPC result or error for one request."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    decision_id: str = ""
    # The result is the sidecar's own input_required (a step-up, 2026-07-28).
    input_required: bool = False

    def message(self, msg_id: Any) -> dict[str, Any]:
        if self.error is not None:
            return {"jsonrpc": "2.0", "id": msg_id, "error": self.error}
        return jsonrpc.result(msg_id, self.result or {})


def refusal(result: CallResult) -> dict[str, Any]:
    """The JSON-RPC error for a call the sidecar did not complete: the upstream's own error
    intact, or the sidecar's code with the decision id, reasons and any approval id."""
    if result.rpc_error is not None:
        return result.rpc_error
    data: dict[str, Any] = {
        "code": result.code,
        "decision_id": result.decision_id,
        "reasons": list(result.decision.reasons) if result.decision else [],
    }
    if result.approval_id:
        data["approval_id"] = result.approval_id
    if result.approval_url:  # the approval's console page (approvals.console_url)
        data["approval_url"] = result.approval_url
    code = jsonrpc.rpc_code_for(result.status)
    if result.code == "method_not_allowed":
        code = METHOD_NOT_FOUND
    return {"code": code, "message": result.message or result.code, "data": data}


class Methods:
    def __init__(self, settings: Settings, calls: McpCalls, catalog: Catalog) -> None:
        self._settings = settings
        self._calls = calls  # the MCP adapter on the guarded path
        self._catalog = catalog
        # input_required's requestState, as long as an approval lives: sealed under
        # mcp.request_state_key_file (shared by replicas), else a key of this process.
        self._seal = StateSeal(
            settings.approvals.max_ttl_s, key=load_state_key(settings.mcp.request_state_key_file)
        )

    @staticmethod
    def initialize(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The handshake: the client's revision if it is one the sidecar speaks, else the
        newest; the sidecar's own capabilities (it aggregates; upstreams are behind it)."""
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        return version, {
            "protocolVersion": version,
            "capabilities": CAPABILITIES,
            "serverInfo": SERVER_INFO,
            "instructions": "Tools of the configured MCP servers, as NAME.tool, governed by "
            "agent-sidecar policy.",
        }

    @staticmethod
    def discover(versions: list[str]) -> dict[str, Any]:
        return {
            "supportedVersions": versions,
            "capabilities": CAPABILITIES,
            "cacheScope": "private",
            "ttlMs": 0,
        }

    async def serve(
        self, method: str, params: dict[str, Any], context: CallContext, *, modern: bool = False
    ) -> Reply:
        """``modern``: a 2026-07-28 request (a step-up may be answered ``input_required``)."""
        if method in _NOOP:
            return Reply(result={})
        if method in _LISTS:
            return await self._list(method, params, context)
        if method in METHOD_KINDS:
            return await self._act(method, params, context, modern=modern)
        result = await self._calls.reject(
            "MCP other",  # a bounded metrics label; the method is in the message
            "method_not_allowed",
            f"method {method[:100]!r} is not served by the agent-sidecar MCP endpoint",
        )
        return Reply(error=refusal(result), decision_id=result.decision_id)

    async def _list(self, method: str, params: dict[str, Any], context: CallContext) -> Reply:
        kind = _LISTS[method]
        task_id = _meta(params).get("task_id", "")
        if not isinstance(task_id, str):
            return _invalid(f"_meta {META_PREFIX}task_id must be a string")
        entries = await self._catalog.entries(kind)
        result, shown = await self._calls.mcp_visible(context, entries, method, task_id=task_id)
        if result.status != grpc.StatusCode.OK:
            return Reply(error=refusal(result), decision_id=result.decision_id)
        # An upstream's definitions never speak in the sidecar's _meta namespace.
        bodies = [strip_sidecar_meta(e.body, copy=True) for e in shown]
        return Reply(result={KINDS[kind][1]: bodies}, decision_id=result.decision_id)

    async def _act(
        self, method: str, params: dict[str, Any], context: CallContext, *, modern: bool
    ) -> Reply:
        meta = _meta(params)
        name_key = "uri" if method == "resources/read" else "name"
        name = params.get(name_key)
        if not isinstance(name, str) or not name:
            return _invalid(f"params.{name_key} must be a non-empty string")
        arguments = params.get("arguments", {}) if method != "resources/read" else {}
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _invalid("params.arguments must be an object")
        facts = {k: meta.get(k, "") for k in ("task_id", "intent", "approval_id")}
        no_wait = meta.get("no_wait", False)
        if not all(isinstance(v, str) for v in facts.values()) or not isinstance(no_wait, bool):
            return _invalid(
                f"_meta {META_PREFIX}task_id, intent, approval_id: strings; no_wait: bool"
            )
        wait = self._settings.mcp.wait_for_approval_s
        not_waiting: bool | str = no_wait or (wait == 0 and NOT_WAITING)
        # 2026-07-28 with a page to open and a client that can open it: input_required.
        links = (
            modern
            and bool(self._settings.approvals.console_url)
            and supports_url_elicitation(params)
        )
        try:  # a retry of an input_required answer: the approval its state names
            opened = (
                self._opened(params, method, name, arguments, facts["approval_id"])
                if modern
                else None
            )
        except InvalidRequestState as exc:  # audited with its caller: someone may be probing
            result = await self._calls.refuse(method, name, context, exc.code, str(exc))
            return Reply(error=refusal(result), decision_id=result.decision_id)
        mismatch = ""
        refused_input = False
        if opened is not None:
            facts["approval_id"] = opened.approval_id
            if not opened.issued_for_this_request:
                mismatch = (
                    f"params.requestState was issued for another request (its method, name or "
                    f"arguments differ): approval {opened.approval_id} is not for this call"
                )
            if declined(params.get("inputResponses")):
                links, not_waiting, refused_input = False, DECLINED, True
        elif links:
            not_waiting = ANSWERED_INPUT_REQUIRED
        server = self._settings.mcp_servers.get(name.partition(".")[0])
        timeout = server.timeout_s if server is not None else 30.0
        call = McpCall(
            method=method,
            name=name,
            arguments=arguments,
            no_wait=not_waiting,
            mismatch=mismatch,
            declined=refused_input,
            retry=opened is not None,
            **facts,
        )
        result = await self._calls.call_mcp(
            call, context=context, time_remaining=wait + timeout + 1.0
        )
        if result.status == grpc.StatusCode.OK:  # the upstream's, minus the sidecar's namespace
            answer = strip_sidecar_meta(result.answer or {})
            return Reply(result=answer, decision_id=result.decision_id)
        if result.code == "approval_required" and result.approval_id:
            pending = self._input_required(call, result, ask=opened is None) if links else None
            if pending is not None:
                return Reply(result=pending, decision_id=result.decision_id, input_required=True)
            if refused_input:  # say why the client's call ends here, with the approval's page
                error = refusal(result)
                if "approval_url" not in error["data"]:
                    with contextlib.suppress(InvalidApprovalId):
                        link = approval_url(self._settings.approvals, result.approval_id)
                        if link:
                            error["data"]["approval_url"] = link
                return Reply(error=error, decision_id=result.decision_id)
        return Reply(error=refusal(result), decision_id=result.decision_id)

    def _opened(
        self,
        params: dict[str, Any],
        method: str,
        name: str,
        arguments: dict[str, Any],
        approval_id: str,
    ) -> OpenedState | None:
        """The verified ``requestState`` of a retry, ``None`` for a first call (or a
        handshake-era one: neither field is of that revision). Raises InvalidRequestState."""
        state = params.get("requestState")
        responses = params.get("inputResponses")
        if state is None and responses is None:
            return None
        if responses is not None and not isinstance(responses, dict):
            raise InvalidRequestState("params.inputResponses must be an object")
        opened = self._seal.open(state, method, name, arguments)
        if approval_id not in ("", opened.approval_id):
            raise InvalidRequestState(
                f"_meta {META_PREFIX}approval_id and params.requestState name different approvals"
            )
        return opened

    def _input_required(
        self, call: McpCall, result: CallResult, *, ask: bool
    ) -> dict[str, Any] | None:
        """The step-up as ``input_required``, or ``None`` when there is no page to link."""
        try:
            url = result.approval_url or approval_url(self._settings.approvals, result.approval_id)
        except InvalidApprovalId:
            return None
        if not url:
            return None
        reasons = list(result.decision.reasons) if result.decision else []
        state = self._seal.seal(result.approval_id, call.method, call.name, call.arguments)
        return input_required(call.name, result.approval_id, url, reasons, state, ask=ask)


def _meta(params: dict[str, Any]) -> dict[str, Any]:
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return {}
    return {k.removeprefix(META_PREFIX): v for k, v in meta.items() if k.startswith(META_PREFIX)}


def _invalid(message: str) -> Reply:
    return Reply(
        error={"code": INVALID_PARAMS, "message": message, "data": {"code": "malformed_request"}}
    )
