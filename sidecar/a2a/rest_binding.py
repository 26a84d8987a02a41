"""A2A's HTTP+JSON (REST) binding, at the wire to a peer only (docs/a2a.md "Bindings").

The agent always speaks JSON-RPC to the sidecar, and policy, classification, redaction and
audit read that JSON-RPC request. For a peer that serves only HTTP+JSON, the request the
policy allowed (already redacted) is translated here into the 1.0 REST route and verb the
a2a-sdk 1.3.0 server serves (``a2a/server/routes/rest_routes.py``), and the peer's answer,
each streamed event and its ``google.rpc.Status`` errors are translated back into the
JSON-RPC message the agent's client expects. Nothing here decides.

Path parameters (task, push-config and tenant ids) are the one new attack surface: an id is
a single path segment of unreserved characters (``A-Z a-z 0-9 . _ ~ -``, not only dots), so
``/``, ``..``, ``?``, ``#``, ``%`` or ``:`` (``x:subscribe``, another route of the peer) can
never reach another route; a tenant is also never one of the server's own first route
words (``tasks``, ``extendedAgentCard``, ``v1``, ...: the SDK matches those before the
tenant mount); anything else is ``malformed_request`` before a byte leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode as _urlencode

from sidecar.calls.a2a import PeerFailure
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = [
    "BINDINGS",
    "HTTP_JSON",
    "INBOUND_HTTP_STATUS",
    "JSONRPC",
    "JSON_KINDS",
    "RestRefusal",
    "RestRequest",
    "binding_of",
    "card_bindings",
    "rest_refusal",
    "to_rest",
]

JSONRPC = "jsonrpc"
HTTP_JSON = "http_json"
# ``auto``: from the pinned card, JSON-RPC preferred.
BINDINGS = ("auto", JSONRPC, HTTP_JSON)
# What a REST peer's JSON answer may be labelled (the SDK answers application/a2a+json).
JSON_KINDS = frozenset({"application/json", "application/a2a+json"})
_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
_QUERY_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
# The first path segments of a REST server's own top-level routes (the SDK tries them before
# its ``/{tenant}`` mount): a tenant named so would reach another route (``/tasks/tasks`` is
# GetTask of task "tasks"; ``/v1/...`` the 0.3 routes). Compared case-folded.
_ROUTE_WORDS = frozenset({"tasks", "extendedagentcard", "message", "v1", "card", ".well-known"})
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# google.rpc.ErrorInfo.reason (the SDK's A2A_ERROR_MAPPING) -> A2A's JSON-RPC error code.
_CODE_BY_REASON = {
    "TASK_NOT_FOUND": -32001,
    "TASK_NOT_CANCELABLE": -32002,
    "PUSH_NOTIFICATION_NOT_SUPPORTED": -32003,
    "UNSUPPORTED_OPERATION": -32004,
    "CONTENT_TYPE_NOT_SUPPORTED": -32005,
    "INVALID_AGENT_RESPONSE": -32006,
    "EXTENDED_AGENT_CARD_NOT_CONFIGURED": -32007,
    "EXTENSION_SUPPORT_REQUIRED": -32008,
    "VERSION_NOT_SUPPORTED": -32009,
    "INVALID_PARAMS": -32602,
    "INVALID_REQUEST": -32600,
    "METHOD_NOT_FOUND": -32601,
    "INTERNAL_ERROR": -32603,
}
_METHOD_NOT_FOUND = -32601
_INTERNAL_ERROR = -32603
# A request to the inbound listener shaped like a REST route (an optional tenant or the 0.3
# ``/v1`` prefix before it).
_REST_ROUTE = re.compile(
    r"^(?:/[^/]+)??(?:/v1)?/(?:message:(?:send|stream)|tasks(?:/.*)?|extendedAgentCard|card)$"
)


def card_bindings(card: Mapping[str, Any]) -> set[str]:
    """The protocol bindings a (pinned) card offers, upper-case: 1.0 ``supportedInterfaces``
    ``protocolBinding``; 0.3 (a card with ``url``) ``preferredTransport`` (JSONRPC when
    absent) and ``additionalInterfaces`` ``transport``; none for a card with neither."""
    found: set[str] = set()
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):
        for item in interfaces:
            if isinstance(item, dict) and isinstance(item.get("protocolBinding"), str):
                found.add(item["protocolBinding"].upper())
        return found
    if "url" not in card:  # not a 0.3 card either (a 1.0 card's empty list is dropped)
        return found
    preferred = card.get("preferredTransport", "JSONRPC")
    if isinstance(preferred, str):
        found.add(preferred.upper())
    additional = card.get("additionalInterfaces")
    if isinstance(additional, list):
        for item in additional:
            if isinstance(item, dict) and isinstance(item.get("transport"), str):
                found.add(item["transport"].upper())
    return found


def binding_of(configured: str, card: Mapping[str, Any]) -> str:
    """The binding the sidecar speaks to a peer: the configured one, or with ``auto`` the
    pinned card's, JSON-RPC whenever the card offers it. A card offering neither (only
    GRPC, no interface at all) is ``binding_unsupported``: guessing would send the request
    in a binding the card, and so policy, never named. A 0.3 card without
    ``preferredTransport`` offers JSON-RPC (its spec's default)."""
    if configured != "auto":
        return configured
    offered = card_bindings(card)
    if "JSONRPC" in offered:
        return JSONRPC
    if "HTTP+JSON" in offered:
        return HTTP_JSON
    raise _failure(
        "the peer's pinned card offers neither JSONRPC nor HTTP+JSON, the bindings the "
        "sidecar speaks (set a2a_peers.PEER.binding to override)",
        "binding_unsupported",
    )


def _failure(message: str, code: str = "malformed_request") -> PeerFailure:
    return PeerFailure(message, code=code, reached=False)


def _segment(params: Mapping[str, Any], key: str) -> str:
    """``params[key]`` as one percent-encoded path segment, or refused."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise _failure(f"params.{key} is required (a non-empty string) for an HTTP+JSON peer")
    if not _SEGMENT.match(value) or set(value) == {"."}:
        raise _failure(
            f"params.{key} cannot be a path segment for an HTTP+JSON peer: only letters, "
            "digits and . _ ~ - (not only dots), at most 256"
        )
    return quote(value, safe="")


def _tenant(params: Mapping[str, Any]) -> str:
    """``params.tenant`` as the first path segment, never one of the server's route words."""
    segment = _segment(params, "tenant")
    if segment.casefold() in _ROUTE_WORDS:
        raise _failure(
            "params.tenant cannot be a word of the peer's own routes (tasks, "
            "extendedAgentCard, message, v1, card, .well-known) for an HTTP+JSON peer"
        )
    return segment


def _query(params: Mapping[str, Any], skip: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The params not in the path as query parameters: scalars, or lists of scalars
    (repeated keys); an object cannot be a query parameter and is refused."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if key in skip or value is None:
            continue
        if not _QUERY_KEY.match(key):
            raise _failure(f"params.{key[:64]} cannot be a query parameter")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                out.append((key, "true" if item else "false"))
            elif isinstance(item, str | int | float):
                out.append((key, str(item)))
            else:
                raise _failure(f"params.{key} must be a scalar or a list of scalars here")
    return tuple(out)


@dataclass(frozen=True)
class RestRequest:
    """One JSON-RPC request as the peer's REST route receives it."""

    operation: str
    rpc_id: Any
    verb: str  # GET | POST | DELETE
    path: str  # percent-encoded, relative to the peer's url
    query: tuple[tuple[str, str], ...] = ()
    body: dict[str, Any] | None = None

    @property
    def stream(self) -> bool:
        return self.operation in ("stream", "subscribe")

    def url(self, base: str) -> str:
        """The full, already encoded URL under the peer's configured ``base``."""
        url = base.rstrip("/") + self.path
        if self.query:
            url += "?" + _urlencode(self.query, quote_via=quote, safe="")
        return url

    def data(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()

    def answer(self, raw: bytes) -> dict[str, Any]:
        """The peer's 200 answer as the JSON-RPC response the agent expects."""
        value = _read(raw)
        if not isinstance(value, dict):
            raise _bad("the peer's answer is not a JSON object")
        result = None if self.operation == "push_config_delete" else value
        return {"jsonrpc": "2.0", "id": self.rpc_id, "result": result}

    def error(self, status: int, raw: bytes) -> dict[str, Any]:
        """A non-200 answer's ``google.rpc.Status`` body as a JSON-RPC error (the A2A code
        its ErrorInfo reason stands for); a body of any other shape is peer_bad_response."""
        value = _read(raw, f"the peer answered HTTP {status}")
        error = value.get("error") if isinstance(value, dict) else None
        if not isinstance(error, dict):
            raise _bad(f"the peer answered HTTP {status} without an A2A error")
        return {"jsonrpc": "2.0", "id": self.rpc_id, "error": _rpc_error(status, error)}

    def event(self, block: bytes) -> dict[str, Any] | None:
        """One SSE event's JSON-RPC message: ``data`` a StreamResponse (the result), or with
        ``event: error`` (or a Status body) the error. None for an event without data."""
        lines = block.split(b"\n")
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return None
        value = _read(b"\n".join(data))
        if not isinstance(value, dict):
            raise _bad("a streamed event is not a JSON object")
        named = any(line.removeprefix(b"event:").strip() == b"error" for line in lines
                    if line.startswith(b"event:"))  # fmt: skip
        error = value.get("error")
        if named or (len(value) == 1 and isinstance(error, dict)):
            if not isinstance(error, dict):
                raise _bad("a streamed error event holds no error")
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            return {"jsonrpc": "2.0", "id": self.rpc_id, "error": _rpc_error(status, error)}
        return {"jsonrpc": "2.0", "id": self.rpc_id, "result": value}


def _bad(message: str) -> PeerFailure:
    return PeerFailure(message, code="peer_bad_response", reached=True)


def _read(raw: bytes, what: str = "the peer's answer") -> Any:
    try:
        return loads_strict(raw, what, quote=False)  # a fixed message: nothing of the peer's
    except StrictJsonError as exc:
        raise _bad(str(exc)) from None


def _rpc_error(status: int, error: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-RPC error from a Status: the code its ErrorInfo reason names (the SDK's own
    mapping), else by HTTP status (404: method not found, as the SDK's REST client reads it;
    anything else internal); ErrorInfo.metadata as ``data``, as the SDK's JSON-RPC server
    sends ``A2AError.data``."""
    reason, metadata = "", None
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO:
            reason = detail.get("reason") if isinstance(detail.get("reason"), str) else ""
            metadata = detail.get("metadata")
            break
    code = _CODE_BY_REASON.get(reason)
    data: dict[str, Any] = dict(metadata) if isinstance(metadata, dict) and metadata else {}
    if code is None:
        code = _METHOD_NOT_FOUND if status == 404 else _INTERNAL_ERROR
        data["upstream_status"] = status
        if reason:
            data["reason"] = reason[:128]
    message = error.get("message")
    out: dict[str, Any] = {
        "code": code,
        "message": message if isinstance(message, str) else f"the peer answered HTTP {status}",
    }
    if data:
        out["data"] = data
    return out


def to_rest(body: Mapping[str, Any], operation: str, version: str) -> RestRequest:
    """The REST request for one allowed JSON-RPC request (``body``, its params as sent).
    A2A 0.3 methods are not translated (their JSON is not 1.0's): ``binding_unsupported``."""
    if version != "1.0":
        raise _failure(
            f"{body.get('method')} is an A2A 0.3 method; this peer speaks HTTP+JSON (A2A 1.0): "
            "send the 1.0 method instead",
            "binding_unsupported",
        )
    params: dict[str, Any] = dict(body.get("params") or {})
    rpc_id = body.get("id")
    tenant = "/" + _tenant(params) if params.get("tenant") is not None else ""

    def request(verb: str, path: str, **rest: Any) -> RestRequest:
        return RestRequest(operation, rpc_id, verb, tenant + path, **rest)

    if operation == "send":
        return request("POST", "/message:send", body=params)
    if operation == "stream":
        return request("POST", "/message:stream", body=params)
    if operation == "list_tasks":
        return request("GET", "/tasks", query=_query(params, ("tenant",)))
    if operation == "extended_card":
        return request("GET", "/extendedAgentCard")
    if operation in ("get_task", "cancel_task", "subscribe"):
        task = "/tasks/" + _segment(params, "id")
        if operation == "get_task":
            return request("GET", task, query=_query(params, ("id", "tenant")))
        if operation == "cancel_task":
            return request("POST", task + ":cancel", body=params)
        return request("POST", task + ":subscribe")
    configs = "/tasks/" + _segment(params, "taskId") + "/pushNotificationConfigs"
    if operation == "push_config_set":
        return request("POST", configs, body=params)
    if operation == "push_config_list":
        return request("GET", configs, query=_query(params, ("taskId", "tenant")))
    one = configs + "/" + _segment(params, "id")
    skip = ("taskId", "id", "tenant")
    if operation == "push_config_get":
        return request("GET", one, query=_query(params, skip))
    if operation == "push_config_delete":
        return request("DELETE", one, query=_query(params, skip))
    raise _failure(f"{operation} has no HTTP+JSON route", "binding_unsupported")


# The HTTP status the inbound listener answers a REST request with (its JSON-RPC refusals are
# HTTP 200; a REST client must see an error status to read the error at all).
INBOUND_HTTP_STATUS = {"binding_unsupported": 404}


@dataclass(frozen=True)
class RestRefusal:
    """What the inbound listener answers a REST-shaped request (it speaks JSON-RPC only)."""

    code: str = "binding_unsupported"
    message: str = (
        "this A2A endpoint speaks the JSON-RPC binding only: POST A2A JSON-RPC 2.0 to /; "
        "the HTTP+JSON binding (POST /message:send, GET /tasks/ID, ...) is not served"
    )
    rpc_code: int = _METHOD_NOT_FOUND


def rest_refusal(method: str, path: str) -> RestRefusal | None:
    """The refusal for an HTTP+JSON request to the inbound listener (None: not REST-shaped)."""
    rest_shaped = method in ("GET", "POST", "DELETE") and _REST_ROUTE.match(path)
    return RestRefusal() if rest_shaped else None
