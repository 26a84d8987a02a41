"""A2A's JSON-RPC wire format as the sidecar reads it: the 1.0 and 0.3 method names mapped to
one operation each, every request's params checked for shape before anything is decided, and
the error objects the sidecar answers with (docs/a2a.md "Outbound").

The sidecar does not import a2a-sdk at runtime: requests are plain dicts read by the one
strict JSON reader (sidecar/strict_json.py), so what policy sees is what the peer receives.

Read only, by :func:`parse_request`: the method (1.0 or 0.3 name), the id, the params, and
for a message its parts, its skill (any key of ``message.metadata`` or ``params.metadata``
that reads ``skill`` or ``skillId`` case-folded without ``_`` and ``-``: a non-empty string;
all present must agree, else ``skill_mismatch``: sidecar/a2a/identifiers.py), its task id and
context id, and the URL of a push-notification config (one: a configuration naming both the
1.0 and the 0.3 key is refused). Identifier members (ids, ``tenant``, ``extensions``,
``referenceTaskIds``, ``acceptedOutputModes``) are bounded (sidecar/a2a/identifiers.py).
Anything of the wrong shape is an :class:`A2aProtocolError` carrying the JSON-RPC code and a
stable snake_case ``code``.

A2A's JSON is camelCase, but the SDKs also accept the snake_case proto names (``task_id``
for ``taskId``): a peer would act on ``task_id`` while the sidecar read ``taskId``. So a
snake_case member of any object the sidecar reads (params, message, part, file,
configuration, push config) is refused (``invalid_params``), never guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.identifiers import MAX_ID_CHARS, bad_params, id_list, ids, skill_of, string
from sidecar.a2a.push_url import PushUrlError, parse_push_url
from sidecar.a2a.shape import decode_bytes
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = [
    "A2A_VERSION_HEADER",
    "APPROVAL_REQUIRED",
    "DEADLINE_EXCEEDED",
    "DENIED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHODS",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "READ_OPERATIONS",
    "RESOURCE_EXHAUSTED",
    "STREAMING_OPERATIONS",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
    "A2aRequest",
    "decoded_raw",
    "dumps",
    "parse_request",
    "part_kind",
    "part_texts",
    "result",
    "rpc_error",
]

A2A_VERSION_HEADER = "A2A-Version"

# JSON-RPC 2.0's own codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# The sidecar's own refusals, in the implementation-defined band above A2A's (-32001..-32009)
# and with the same numbers the MCP endpoint uses (sidecar/mcp/jsonrpc.py).
DENIED = -32010  # policy (or the sidecar) refused this call
APPROVAL_REQUIRED = -32011  # a human must approve this exact call (data.approval_id)
UNAUTHENTICATED = -32012  # the agent could not be attested
UNAVAILABLE = -32013  # the peer, the audit log, state or a credential is unavailable
DEADLINE_EXCEEDED = -32014  # the call's time ran out (the peer or the approver)
RESOURCE_EXHAUSTED = -32015  # a size bound, a budget or a rate limit

# method -> (operation, protocol version)
METHODS: dict[str, tuple[str, str]] = {
    "SendMessage": ("send", "1.0"),
    "SendStreamingMessage": ("stream", "1.0"),
    "GetTask": ("get_task", "1.0"),
    "ListTasks": ("list_tasks", "1.0"),
    "CancelTask": ("cancel_task", "1.0"),
    "SubscribeToTask": ("subscribe", "1.0"),
    "CreateTaskPushNotificationConfig": ("push_config_set", "1.0"),
    "GetTaskPushNotificationConfig": ("push_config_get", "1.0"),
    "ListTaskPushNotificationConfigs": ("push_config_list", "1.0"),
    "DeleteTaskPushNotificationConfig": ("push_config_delete", "1.0"),
    "GetExtendedAgentCard": ("extended_card", "1.0"),
    "message/send": ("send", "0.3"),
    "message/stream": ("stream", "0.3"),
    "tasks/get": ("get_task", "0.3"),
    "tasks/cancel": ("cancel_task", "0.3"),
    "tasks/resubscribe": ("subscribe", "0.3"),
    "tasks/pushNotificationConfig/set": ("push_config_set", "0.3"),
    "tasks/pushNotificationConfig/get": ("push_config_get", "0.3"),
    "tasks/pushNotificationConfig/list": ("push_config_list", "0.3"),
    "tasks/pushNotificationConfig/delete": ("push_config_delete", "0.3"),
    "agent/getAuthenticatedExtendedCard": ("extended_card", "0.3"),
}
# Operations that change nothing at the peer: policy sees ``operation: read`` for them.
READ_OPERATIONS = frozenset(
    {"get_task", "list_tasks", "subscribe", "push_config_get", "push_config_list", "extended_card"}
)
# Operations the peer answers with an SSE stream.
STREAMING_OPERATIONS = frozenset({"stream", "subscribe"})
# Where the task id is, per (operation, version); a missing entry: the request names none.
_TASK_ID_KEY: dict[tuple[str, str], str] = {
    ("get_task", "1.0"): "id",
    ("get_task", "0.3"): "id",
    ("cancel_task", "1.0"): "id",
    ("cancel_task", "0.3"): "id",
    ("subscribe", "1.0"): "id",
    ("subscribe", "0.3"): "id",
    ("push_config_set", "1.0"): "taskId",
    ("push_config_set", "0.3"): "taskId",
    ("push_config_get", "1.0"): "taskId",
    ("push_config_get", "0.3"): "id",
    ("push_config_list", "1.0"): "taskId",
    ("push_config_list", "0.3"): "id",
    ("push_config_delete", "1.0"): "taskId",
    ("push_config_delete", "0.3"): "id",
}
MAX_PARTS = 256
_ID_KEYS = ("messageId", "taskId", "contextId")
_PARAM_ID_KEYS = ("tenant", "id", "taskId", "contextId", "pushNotificationConfigId")
# A 1.0 part names its content by which field it sets; a 0.3 part by ``kind``.
_V1_PART_FIELDS = {"text": "text", "data": "data", "raw": "raw", "url": "file"}
_V03_PART_KINDS = {"text": "text", "data": "data", "file": "file"}


@dataclass(frozen=True)
class A2aRequest:
    """One A2A JSON-RPC request from the agent, read and shape-checked."""

    method: str
    operation: str
    version: str  # "1.0" | "0.3"
    id: int | str | None
    params: dict[str, Any]
    message: dict[str, Any] | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    skill: str = ""
    task_id: str = ""
    context_id: str = ""
    # The push-notification URL a send's configuration or a push_config_set names ("" none).
    push_url: str = ""
    # message.referenceTaskIds, each once, in order (bounded and non-empty: identifiers.py).
    references: tuple[str, ...] = ()

    @property
    def streaming(self) -> bool:
        return self.operation in STREAMING_OPERATIONS

    @property
    def read_only(self) -> bool:
        return self.operation in READ_OPERATIONS


def _bad(
    message: str, *, rpc: int = INVALID_PARAMS, code: str = "invalid_params"
) -> A2aProtocolError:
    return bad_params(message, rpc=rpc, code=code)


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_ID_CHARS) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def parse_request(body: bytes, *, max_bytes: int | None = None) -> A2aRequest:
    """Read one JSON-RPC request strictly; raise :class:`A2aProtocolError` on anything else.

    ``max_bytes`` bounds the whole body (``message_too_large`` before it is parsed).
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise _bad(
            f"the request is {len(body)} bytes; the limit is {max_bytes}",
            rpc=RESOURCE_EXHAUSTED,
            code="message_too_large",
        )
    try:
        doc = loads_strict(body or b"null", "the request")
    except StrictJsonError as exc:
        raise _bad(str(exc), rpc=PARSE_ERROR, code="parse_error") from None
    if isinstance(doc, list):
        raise _bad(
            "JSON-RPC batches are not supported", rpc=INVALID_REQUEST, code="invalid_request"
        )
    if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
        raise _bad(
            'a JSON-RPC 2.0 object ("jsonrpc": "2.0") is required',
            rpc=INVALID_REQUEST,
            code="invalid_request",
        )
    if "id" not in doc or not _valid_id(doc["id"]):
        raise _bad(
            "id must be a string or an integer (A2A has no notifications)",
            rpc=INVALID_REQUEST,
            code="invalid_request",
        )
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise _bad("method must be a non-empty string", rpc=INVALID_REQUEST, code="invalid_request")
    if method not in METHODS:
        raise _bad(
            f"unknown A2A method {method[:64]!r}", rpc=METHOD_NOT_FOUND, code="method_not_found"
        )
    operation, version = METHODS[method]
    params = doc.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _bad("params must be an object")
    _no_aliases(params, "params")
    ids(params, _PARAM_ID_KEYS, "params")
    request = A2aRequest(
        method=method, operation=operation, version=version, id=doc["id"], params=params
    )
    if operation in ("send", "stream"):
        return _message_request(request)
    return _task_request(request)


def _message_request(request: A2aRequest) -> A2aRequest:
    message = request.params.get("message")
    if message is None:
        raise _bad("params.message is required")
    if not isinstance(message, dict):
        raise _bad("params.message must be an object")
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad("params.message.parts must be a non-empty list")
    if len(parts) > MAX_PARTS:
        raise _bad(
            f"params.message has {len(parts)} parts; the limit is {MAX_PARTS}",
            rpc=RESOURCE_EXHAUSTED,
            code="message_too_large",
        )
    _no_aliases(message, "params.message")
    ids(message, _ID_KEYS, "params.message")
    id_list(message, "extensions", "params.message")
    id_list(message, "referenceTaskIds", "params.message")
    for index, part in enumerate(parts):
        part_kind(part, f"params.message.parts[{index}]")
        _no_aliases(part, f"params.message.parts[{index}]")
        if isinstance(part.get("file"), dict):
            _no_aliases(part["file"], f"params.message.parts[{index}].file")
    metadata = message.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("params.message.metadata must be an object")
    for key in ("configuration", "metadata"):
        if request.params.get(key) is not None and not isinstance(request.params[key], dict):
            raise _bad(f"params.{key} must be an object")
    skill = skill_of(metadata or {}, request.params.get("metadata") or {})
    push_url = ""
    configuration = request.params.get("configuration")
    if isinstance(configuration, dict):
        _no_aliases(configuration, "params.configuration")
        id_list(configuration, "acceptedOutputModes", "params.configuration")
        named = [
            key
            for key in ("taskPushNotificationConfig", "pushNotificationConfig")
            if configuration.get(key) is not None
        ]
        if len(named) > 1:  # each version's server reads one of them: policy must see that one
            raise _bad("params.configuration names a push config twice (1.0 and 0.3 keys)")
        for key in named:
            push_url = _push_url(configuration[key], f"params.configuration.{key}")
    return A2aRequest(
        method=request.method,
        operation=request.operation,
        version=request.version,
        id=request.id,
        params=request.params,
        message=message,
        parts=parts,
        skill=skill,
        task_id=string(message, "taskId", "params.message"),
        context_id=string(message, "contextId", "params.message"),
        push_url=push_url,
        references=tuple(dict.fromkeys(message.get("referenceTaskIds") or ())),
    )


def _no_aliases(container: dict[str, Any], where: str) -> None:
    """Refuse a snake_case member (an SDK alias of a camelCase field the sidecar reads)."""
    for key in container:
        if "_" in key:
            raise _bad(
                f"{where}.{key[:64]}: snake_case member names are not accepted (A2A's JSON "
                "is camelCase; an alias could name another task than the one checked)"
            )


def _push_url(config: Any, where: str) -> str:
    """The URL of one push-notification config (its shape checked; the URL strictly, by
    sidecar/a2a/push_url.py)."""
    if not isinstance(config, dict):
        raise _bad(f"{where} must be an object")
    _no_aliases(config, where)
    url = config.get("url")
    if url is None:
        return ""
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}.url must be a non-empty string")
    try:  # policy matches its host and port: one unambiguous reading, or refused
        parse_push_url(url)
    except PushUrlError as exc:
        raise _bad(f"{where}.url {exc}") from None  # the reason, never the URL (userinfo)
    return url


def _task_request(request: A2aRequest) -> A2aRequest:
    key = _TASK_ID_KEY.get((request.operation, request.version))
    task_id = ""
    if key is not None:
        task_id = string(request.params, key, "params", required=True)
        if not task_id:
            raise _bad(f"params.{key} must not be empty")
    context_id = ""
    if request.operation == "list_tasks":
        context_id = string(request.params, "contextId", "params")
    push_url = ""
    if request.operation == "push_config_set":
        nested = request.params.get("pushNotificationConfig")
        if nested is not None:
            push_url = _push_url(nested, "params.pushNotificationConfig")
        if "url" in request.params:
            if push_url:
                raise _bad("params names a push URL twice (url and pushNotificationConfig.url)")
            push_url = _push_url({"url": request.params["url"]}, "params")
    return A2aRequest(
        method=request.method,
        operation=request.operation,
        version=request.version,
        id=request.id,
        params=request.params,
        task_id=task_id,
        context_id=context_id,
        push_url=push_url,
    )


def part_kind(part: Any, where: str = "part") -> str:
    """``text`` | ``data`` | ``raw`` (1.0 inline bytes) | ``file`` (a URL, a 0.3 file) for one
    part of either version; refuse any other shape."""
    if not isinstance(part, dict):
        raise _bad(f"{where} must be an object")
    kind = part.get("kind")
    if kind is not None:
        if kind not in _V03_PART_KINDS:
            raise _bad(f"{where}.kind must be one of text, data, file")
        found = _V03_PART_KINDS[kind]
        if found == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"{where}.text must be a string")
        if found == "file" and not isinstance(part.get("file"), dict):
            raise _bad(f"{where}.file must be an object")
        return found
    set_fields = [name for name in _V1_PART_FIELDS if part.get(name) is not None]
    if len(set_fields) != 1:
        raise _bad(f"{where} must set exactly one of text, data, raw, url")
    name = set_fields[0]
    if name in ("text", "raw", "url") and not isinstance(part[name], str):
        raise _bad(f"{where}.{name} must be a string")
    return _V1_PART_FIELDS[name]


def _strings(value: Any, out: list[str]) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def decoded_raw(value: Any) -> str | None:
    """The text inline bytes hold (bounded, valid base64 and UTF-8), else None."""
    return decode_bytes(value)


def part_texts(parts: list[dict[str, Any]]) -> list[str]:
    """Every human-readable string in ``parts`` (text, data leaves and keys, file names and
    URLs, part metadata, inline bytes that are UTF-8 text): what classification reads."""
    out: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            out.append(part["text"])
        file = part.get("file")
        for raw in (part.get("raw"), file.get("bytes") if isinstance(file, dict) else None):
            text = decode_bytes(raw)
            if text is not None:
                out.append(text)
        for key in ("data", "metadata"):
            if part.get(key) is not None:
                _strings(part[key], out)
        for key in ("url", "filename"):
            if isinstance(part.get(key), str):
                out.append(part[key])
        file = part.get("file")
        if isinstance(file, dict):
            for key in ("uri", "name"):
                if isinstance(file.get(key), str):
                    out.append(file[key])
    return out


def rpc_error(
    id: Any,
    a2a_code: int,
    message: str,
    code: str,
    *,
    decision_id: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-RPC error response whose ``data`` carries the stable ``code`` (the audit and
    metrics label) and the decision id; ``extra`` adds members (``approval_id``, ``reasons``)."""
    data: dict[str, Any] = {"code": code, "decision_id": decision_id}
    if extra:
        data.update(extra)
    return {
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": a2a_code, "message": message, "data": data},
    }


def result(id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
