"""JSON-RPC 2.0 as MCP uses it: reading the agent's messages strictly, writing answers, and
the one table from the sidecar's stable codes to JSON-RPC error codes (docs/mcp.md).

The sidecar's own refusals are JSON-RPC errors whose ``data`` carries the stable snake_case
code (also the audit and metrics label), the decision id, policy's reasons and, for a
step-up, the approval id; never ``isError`` text a client would read as the tool's answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from mcp_types.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

from sidecar.mcp.errors import McpRequestError
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = [
    "APPROVAL_REQUIRED",
    "DENIED",
    "SIDECAR_CODES",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
    "Message",
    "dumps",
    "error",
    "parse_message",
    "result",
    "rpc_code_for",
]

# The sidecar's codes, in JSON-RPC's implementation-defined band (-32000..-32019; -32000 and
# -32001 are the official SDK's own, never sent, so they are not used).
DENIED = -32010  # policy (or the sidecar) refused this call
APPROVAL_REQUIRED = -32011  # a human must approve this exact call; retry with the approval id
UNAUTHENTICATED = -32012  # the caller could not be attested
UNAVAILABLE = -32013  # an upstream, the audit log, state or a credential is unavailable
DEADLINE_EXCEEDED = -32014  # the call's time ran out (waiting for approval or the upstream)
RESOURCE_EXHAUSTED = -32015  # a budget, a rate limit or a size bound
# The band the sidecar's own codes are in: an upstream's error with one is not relayed as is.
SIDECAR_CODES = range(-32019, -32001)

_S = grpc.StatusCode
_BY_STATUS: dict[grpc.StatusCode, int] = {
    _S.PERMISSION_DENIED: DENIED,
    _S.FAILED_PRECONDITION: APPROVAL_REQUIRED,
    _S.UNAUTHENTICATED: UNAUTHENTICATED,
    _S.UNAVAILABLE: UNAVAILABLE,
    _S.DEADLINE_EXCEEDED: DEADLINE_EXCEEDED,
    _S.RESOURCE_EXHAUSTED: RESOURCE_EXHAUSTED,
    _S.INVALID_ARGUMENT: INVALID_PARAMS,
    _S.NOT_FOUND: INVALID_PARAMS,  # an unknown tool, prompt or resource (as MCP servers say)
    _S.ABORTED: UNAVAILABLE,
    _S.INTERNAL: INTERNAL_ERROR,
}


def rpc_code_for(status: grpc.StatusCode) -> int:
    """The JSON-RPC error code a call ending with ``status`` is answered with."""
    return _BY_STATUS.get(status, DENIED)


@dataclass(frozen=True)
class Message:
    """One JSON-RPC message from the agent: a request (``id`` set), a notification, or a
    response to something the sidecar asked (never: it asks nothing, so these are dropped)."""

    method: str
    params: dict[str, Any]
    id: int | str | None = None
    is_response: bool = False

    @property
    def is_request(self) -> bool:
        return self.id is not None and not self.is_response


def parse_message(raw: bytes) -> Message:
    """Read one message strictly; batches (removed from MCP in 2025-06-18) are refused."""
    try:
        body = loads_strict(raw or b"null", "the message")
    except StrictJsonError as exc:
        raise McpRequestError(PARSE_ERROR, str(exc), http_status=400) from None
    if isinstance(body, list):
        raise McpRequestError(
            INVALID_REQUEST, "JSON-RPC batches are not supported", http_status=400
        )
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise McpRequestError(
            INVALID_REQUEST, 'a JSON-RPC 2.0 object ("jsonrpc": "2.0") is required', http_status=400
        )
    msg_id = body.get("id")
    if "id" in body and not _valid_id(msg_id):
        raise McpRequestError(INVALID_REQUEST, "id must be a string or an integer", http_status=400)
    if "method" not in body:
        if "result" in body or "error" in body:
            return Message(method="", params={}, id=msg_id, is_response=True)
        raise McpRequestError(INVALID_REQUEST, "method is required", http_status=400)
    method = body["method"]
    if not isinstance(method, str) or not method:
        raise McpRequestError(INVALID_REQUEST, "method must be a non-empty string", http_status=400)
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise McpRequestError(INVALID_PARAMS, "params must be an object", data=None)
    return Message(method=method, params=params, id=msg_id if "id" in body else None)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def result(msg_id: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
