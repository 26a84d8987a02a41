"""What each MCP method does at the sidecar's endpoint, whatever the transport revision:
the handshake and discovery answered by the sidecar itself, the lists aggregated and
filtered by policy, the acting methods through the guarded path, anything else refused.

Known methods are those below; every other method is refused (``method_not_allowed``, and
audited): nothing the agent sends reaches an upstream without a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from mcp_types.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from sidecar import __version__
from sidecar.calls.common import CallResult
from sidecar.config import Settings
from sidecar.identity import CallContext
from sidecar.mcp import jsonrpc
from sidecar.mcp.calls import METHOD_KINDS, McpCall, McpCalls
from sidecar.mcp.catalog import KINDS, Catalog

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
# Answered by the sidecar with nothing to do (handshake-era housekeeping).
_NOOP = frozenset({"ping", "logging/setLevel"})


@dataclass(frozen=True)
class Reply:
    """A JSON-RPC result or error for one request."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    decision_id: str = ""

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
    code = jsonrpc.rpc_code_for(result.status)
    if result.code == "method_not_allowed":
        code = METHOD_NOT_FOUND
    return {"code": code, "message": result.message or result.code, "data": data}


class Methods:
    def __init__(self, settings: Settings, calls: McpCalls, catalog: Catalog) -> None:
        self._settings = settings
        self._calls = calls  # the MCP adapter on the guarded path
        self._catalog = catalog

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

    async def serve(self, method: str, params: dict[str, Any], context: CallContext) -> Reply:
        if method in _NOOP:
            return Reply(result={})
        if method in _LISTS:
            return await self._list(method, params, context)
        if method in METHOD_KINDS:
            return await self._act(method, params, context)
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
        return Reply(
            result={KINDS[kind][1]: [e.body for e in shown]}, decision_id=result.decision_id
        )

    async def _act(self, method: str, params: dict[str, Any], context: CallContext) -> Reply:
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
        server = self._settings.mcp_servers.get(name.partition(".")[0])
        timeout = server.timeout_s if server is not None else 30.0
        call = McpCall(
            method=method,
            name=name,
            arguments=arguments,
            no_wait=no_wait or (wait == 0 and NOT_WAITING),
            **facts,
        )
        result = await self._calls.call_mcp(
            call, context=context, time_remaining=wait + timeout + 1.0
        )
        if result.status != grpc.StatusCode.OK:
            return Reply(error=refusal(result), decision_id=result.decision_id)
        return Reply(result=result.answer, decision_id=result.decision_id)


def _meta(params: dict[str, Any]) -> dict[str, Any]:
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return {}
    return {k.removeprefix(META_PREFIX): v for k, v in meta.items() if k.startswith(META_PREFIX)}


def _invalid(message: str) -> Reply:
    return Reply(
        error={"code": INVALID_PARAMS, "message": message, "data": {"code": "malformed_request"}}
    )
