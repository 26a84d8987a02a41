"""Where an A2A payload holds the protocol's own structure, and where it holds what people
and models read: one walker over requests, results and streamed events, used to classify and
to redact.

Every *value* goes to the caller's function, the protocol's identifiers and enums included
(a message's ``messageId``, a task's ``id`` and ``status.state``, ``referenceTaskIds``,
``extensions``, ``tenant``, ...): a peer or an agent reads them as well as the text, so a card
number used as a ``messageId`` is classified and redacted like one in a part (a real id or
enum carries no class, and redaction leaves it as it is). Only the *keys* at the protocol's
known positions (``messageId``, ``parts``, ``status``, ...) are kept as they are; every other
key (inside ``metadata``, ``data`` or an unknown member) goes to the function too. Raw bytes
(1.0 ``raw``, 0.3 ``file.bytes``) that decode as UTF-8 text are read as that text.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DECODED_BYTES", "Free", "decode_bytes", "map_message", "map_params"]

# Raw bytes larger than this are not decoded (the message size bounds them anyway).
MAX_DECODED_BYTES = 1 << 20

# Applied to every value (a string, number, object or list) and to every key that is not
# the protocol's own at its position.
Free = Callable[[Any], Any]

_KEEP = "keep"
# The JSON-RPC id of an answer: the requester's own id echoed to it (the outbound relay
# answers under the agent's id whatever the peer sent), so it is passed as it is.
_ECHO = "echo"
_RAW = "raw"
# schema name -> member -> how it is read: _KEEP, _ECHO, _RAW, a schema name, or
# [schema name].
_SCHEMAS: dict[str, dict[str, Any]] = {
    "message": {
        "messageId": _KEEP,
        "contextId": _KEEP,
        "taskId": _KEEP,
        "role": _KEEP,
        "kind": _KEEP,
        "extensions": _KEEP,
        "referenceTaskIds": _KEEP,
        "parts": ["part"],
    },
    "part": {"kind": _KEEP, "mediaType": _KEEP, "raw": _RAW, "file": "file"},
    "file": {"mimeType": _KEEP, "mediaType": _KEEP, "bytes": _RAW},
    "task": {
        "id": _KEEP,
        "contextId": _KEEP,
        "kind": _KEEP,
        "status": "status",
        "history": ["message"],
        "artifacts": ["artifact"],
    },
    "status": {"state": _KEEP, "timestamp": _KEEP, "message": "message"},
    "artifact": {"artifactId": _KEEP, "extensions": _KEEP, "parts": ["part"]},
    "status_update": {
        "taskId": _KEEP,
        "contextId": _KEEP,
        "kind": _KEEP,
        "final": _KEEP,
        "status": "status",
    },
    "artifact_update": {
        "taskId": _KEEP,
        "contextId": _KEEP,
        "kind": _KEEP,
        "append": _KEEP,
        "lastChunk": _KEEP,
        "artifact": "artifact",
    },
    "stream_response": {
        "task": "task",
        "message": "message",
        "statusUpdate": "status_update",
        "artifactUpdate": "artifact_update",
    },
    "task_list": {
        "tasks": ["task"],
        "nextPageToken": _KEEP,
        "pageSize": _KEEP,
        "totalSize": _KEEP,
    },
    "push_config": {"id": _KEEP, "taskId": _KEEP, "tenant": _KEEP},
    "push_config_03": {"taskId": _KEEP, "pushNotificationConfig": "push_config"},
    "configuration": {
        "acceptedOutputModes": _KEEP,
        "historyLength": _KEEP,
        "returnImmediately": _KEEP,
        "blocking": _KEEP,
        "taskPushNotificationConfig": "push_config",
        "pushNotificationConfig": "push_config",
    },
    "params": {
        "tenant": _KEEP,
        "id": _KEEP,
        "taskId": _KEEP,
        "contextId": _KEEP,
        "historyLength": _KEEP,
        "pageSize": _KEEP,
        "pageToken": _KEEP,
        "status": _KEEP,
        "includeArtifacts": _KEEP,
        "pushNotificationConfigId": _KEEP,
        "message": "message",
        "configuration": "configuration",
        "pushNotificationConfig": "push_config",
    },
    "rpc": {"jsonrpc": _KEEP, "id": _ECHO},
    "error": {"code": _KEEP},
}
# Values the protocol defines (its enums) carry no data class: passed without being read,
# which keeps the walk cheap on every A2A call (a value of any other spelling is read).
_CONSTANTS = frozenset(
    {
        "2.0",
        *(f"TASK_STATE_{s}" for s in ("SUBMITTED", "WORKING", "COMPLETED", "FAILED")),
        *(f"TASK_STATE_{s}" for s in ("CANCELED", "REJECTED", "INPUT_REQUIRED")),
        *(f"TASK_STATE_{s}" for s in ("AUTH_REQUIRED", "UNSPECIFIED")),
        *("submitted", "working", "completed", "failed", "canceled", "rejected"),
        *("input-required", "auth-required", "unknown"),
        *("ROLE_USER", "ROLE_AGENT", "ROLE_UNSPECIFIED", "user", "agent"),
        *("message", "task", "status-update", "artifact-update", "text", "file", "data"),
        *("text/plain", "application/json"),
    }
)
_KINDS_03 = {
    "task": "task",
    "message": "message",
    "status-update": "status_update",
    "artifact-update": "artifact_update",
}


def decode_bytes(value: Any) -> str | None:
    """The text that base64 ``value`` encodes, when it is bounded, valid base64 and valid
    UTF-8 (whatever media type the sender declared: that is only its word); else None."""
    if not isinstance(value, str) or len(value) > MAX_DECODED_BYTES * 4 // 3 + 4:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=False)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _constant(value: Any) -> bool:
    return (
        value is None or isinstance(value, bool) or (isinstance(value, str) and value in _CONSTANTS)
    )


def _raw(value: Any, free: Free) -> Any:
    if not isinstance(value, str):  # not bytes at all: read as the JSON it is
        return free(value)
    text = decode_bytes(value)
    if text is None:
        return value
    mapped = free(text)
    if mapped == text or not isinstance(mapped, str):
        return value
    return base64.b64encode(mapped.encode()).decode()


def _map(value: Any, schema: str, free: Free) -> Any:
    if schema == "result":
        return _map(value, _result_schema(value), free)
    rules = _SCHEMAS.get(schema)
    if rules is None or not isinstance(value, dict):
        return free(value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        rule = rules.get(key)
        if rule == _KEEP:  # the key is the protocol's; its value is read like any other
            out[key] = item if _constant(item) else free(item)
        elif rule == _ECHO:
            out[key] = item
        elif rule == _RAW:
            out[key] = _raw(item, free)
        elif isinstance(rule, str) and rule != _KEEP:
            out[key] = _map(item, rule, free)
        elif isinstance(rule, list) and isinstance(item, list):
            out[key] = [_map(x, rule[0], free) for x in item]
        else:
            out[free(key)] = free(item)
    return out


def _result_schema(value: Any) -> str:
    """Which A2A object a result is (by its 0.3 ``kind``, or by its 1.0 members)."""
    if not isinstance(value, dict):
        return "free"
    kind = value.get("kind")
    if isinstance(kind, str) and kind in _KINDS_03:
        return _KINDS_03[kind]
    if any(k in value for k in _SCHEMAS["stream_response"]):
        return "stream_response"
    if "tasks" in value:
        return "task_list"
    if "status" in value and "id" in value:
        return "task"
    if "pushNotificationConfig" in value:
        return "push_config_03"
    if "url" in value:
        return "push_config"
    return "free"


def map_message(message: Any, free: Free) -> Any:
    """A JSON-RPC response or streamed event with ``free`` applied to every value and to every
    key but the protocol's own."""
    if not isinstance(message, dict):
        return free(message)
    out = _map({k: v for k, v in message.items() if k not in ("result", "error")}, "rpc", free)
    if "result" in message:
        out["result"] = _map(message["result"], "result", free)
    if "error" in message:
        out["error"] = _map(message["error"], "error", free)
    return out


def map_params(params: Any, free: Free) -> Any:
    """A request's params with ``free`` applied to every value and to every key but the
    protocol's own."""
    return _map(params, "params", free)
