"""Anthropic Messages requests (``POST /v1/messages``, ``/v1/messages/count_tokens``): what
a request means to policy and what goes to the provider.

Everything the request sends is classified and, under a ``redact`` obligation, redacted before
relay: an allow-list names the few values that are not text (numbers such as ``max_tokens``,
``temperature``; base64 image/PDF data; thinking signatures; encrypted search results; the
``authorization_token`` of an MCP server, a credential handled as one), and every other
string, key and number is read: the system prompt, every content block (text, tool_use input,
tool_result content, documents of any source with their titles, context and nested content,
citations' ``cited_text``, image/document ``url`` sources), any key a block or message carries
beyond the known ones, and every other parameter (tools with their descriptions and
``input_schema``, ``tool_choice``, ``stop_sequences``, ``metadata``, ``container``,
``mcp_servers`` with their url, name and tool configuration, and keys the sidecar does not
know). A content block of a type not known here is refused.

Provider-side tools (``mcp_servers``, server tools such as ``web_fetch`` / ``web_search``,
and image/document ``url`` sources, which make the provider fetch a URL) are listed for policy
as ``action.arguments.provider_tools``: ``[{"type", "target"}]``, the target being the URL's
host ("" when the tool may reach any host).

Messages requires ``max_tokens``; a ``max_tokens`` obligation lowers it, and extended
thinking's ``budget_tokens`` with it (it must stay below ``max_tokens`` and at least 1024:
below that the sidecar turns thinking off). The reservation is every text sent (tool
definitions included) plus ``max_tokens``, for one choice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar.classify import classify, redact
from sidecar.errors import SidecarError
from sidecar.token_estimate import reservation_tokens

__all__ = [
    "API",
    "CREDENTIAL_KEYS",
    "NUMERIC_PARAMETERS",
    "MessagesRequest",
    "MessagesRequestError",
    "count_tokens_body",
    "map_readable",
    "parse_request",
    "provider_body",
    "provider_tools",
    "redact_request",
]

API = "messages"
ROLES = frozenset({"user", "assistant"})
# Content block types the sidecar knows (every one is read whole); anything else is refused.
_BLOCKS = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
_NESTED_BLOCKS = frozenset({"text", "image", "document", "search_result"})
# Keys the sidecar sets itself, never passed through as parameters.
_OWN = frozenset({"model", "messages", "system", "stream"})
# The only parameters that stay out of the content: numbers, checked, never text.
NUMERIC_PARAMETERS = frozenset({"max_tokens", "temperature", "top_p", "top_k"})
# Credentials for third parties: sent to the provider, never classified, never shown to policy.
CREDENTIAL_KEYS = frozenset({"authorization_token"})
# Values that are not text: signatures, encrypted results (the provider's own ciphertext).
_OPAQUE_KEYS = frozenset({"signature", "encrypted_content", "encrypted_index"})
# Parameters policy sees by value (the rest by name only, under parameters.other).
_SUMMARY_PARAMETERS = NUMERIC_PARAMETERS | {"thinking", "tool_choice", "service_tier"}
# count_tokens takes only these (the real endpoint refuses the rest).
_COUNT_KEYS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
_STRUCTURE_KEYS = frozenset({"type", "role", "id", "tool_use_id", "media_type", "cache_control"})
_DATED = re.compile(r"_\d{8}$")
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for thinking.budget_tokens


class MessagesRequestError(SidecarError):
    """A Messages request the sidecar cannot govern: malformed, or with unreadable parts."""

    code = "invalid_arguments"


@dataclass(frozen=True)
class MessagesRequest:
    """A Messages request, checked: its system prompt, messages and other parameters."""

    model: str
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    stream: bool = False

    @property
    def max_tokens(self) -> int | None:
        value = self.parameters.get("max_tokens")
        return value if _positive_int(value) else None

    def readable(self) -> dict[str, Any]:
        """Everything the request sends that can be read, as one JSON value (what is
        classified): the opaque values of the allow-list left out."""
        return map_readable(self._whole(), _same, drop=True, top=NUMERIC_PARAMETERS)

    def texts(self) -> list[str]:
        """The prompt's texts, for the reservation and the usage estimate: every string the
        system prompt and messages send (structure such as types, roles and ids left out),
        tool_use inputs with their keys, and each other text-bearing parameter as JSON."""
        found: list[str] = []

        def collect(value: Any, key: str = "") -> None:
            if isinstance(value, str):
                if key not in _STRUCTURE_KEYS:
                    found.append(value)
            elif isinstance(value, dict):
                if value.get("type") in ("tool_use", "server_tool_use", "mcp_tool_use"):
                    found.extend(_strings(value.get("input")))
                    value = {k: v for k, v in value.items() if k != "input"}
                for k, v in value.items():
                    collect(v, str(k))
            elif isinstance(value, list):
                for v in value:
                    collect(v, key)

        whole = map_readable({"system": self.system, "messages": self.messages}, _same, drop=True)
        collect(whole)
        rest = {
            k: v
            for k, v in self._whole().items()
            if k not in NUMERIC_PARAMETERS and k not in ("system", "messages")
        }
        rest = map_readable(rest, _same, drop=True)
        found += [json.dumps(v) for _, v in sorted(rest.items()) if v not in (None, "", [], {})]
        return found

    def data_classes(self) -> list[str]:
        return classify(self.readable())

    def policy_arguments(self) -> dict[str, Any]:
        """A summary for ``action.arguments``: numeric and mode parameters by value, tools by
        name, other parameters by key, the provider-side tools, block counts; never the
        prompt or a credential."""
        summary = {k: v for k, v in self.parameters.items() if k in _SUMMARY_PARAMETERS}
        choice = summary.get("tool_choice")
        if isinstance(choice, dict):  # its mode; the tool it names is among the tools
            summary["tool_choice"] = {"type": choice.get("type")}
        tools = self.parameters.get("tools")
        if isinstance(tools, list):
            summary["tools"] = sorted(str(t.get("name", "")) for t in tools if isinstance(t, dict))
        other = sorted(set(self.parameters) - _SUMMARY_PARAMETERS - {"tools"})
        if other:
            summary["other"] = other
        blocks: dict[str, int] = {}
        for message in self.messages:
            content = message["content"]
            for block in content if isinstance(content, list) else []:
                blocks[block["type"]] = blocks.get(block["type"], 0) + 1
        roles = {str(m["role"]) for m in self.messages} | ({"system"} if self.system else set())
        return {
            "parameters": summary,
            "provider_tools": provider_tools(self),
            "messages": {
                "count": len(self.messages),
                "chars": sum(len(t) for t in self.texts()),
                "roles": sorted(roles),
                "blocks": dict(sorted(blocks.items())),
            },
        }

    def reservation(self, output_cap: int | None) -> int:
        """Tokens to set aside before relay: every text sent, tool definitions included,
        plus the output cap (one choice: Messages has no ``n``)."""
        return reservation_tokens(self.texts(), output_cap, 1)

    def _whole(self) -> dict[str, Any]:
        """All the request sends, an MCP server's credential left out (only there: the same
        key anywhere else, say in a tool input, is text like any other)."""
        whole = {"system": self.system, "messages": self.messages, **self.parameters}
        servers = self.parameters.get("mcp_servers")
        if isinstance(servers, list):
            whole["mcp_servers"] = [
                {k: v for k, v in s.items() if k not in CREDENTIAL_KEYS} for s in servers
            ]
        return whole


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _strings(value: Any) -> list[str]:
    """A JSON value's keys and leaves as strings (a tool input's text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []


def _same(value: Any) -> Any:
    return value


def _opaque(parent: Mapping[str, Any], key: Any) -> bool:
    """Whether ``parent[key]`` is one of the allow-listed values that are not text."""
    if key in _OPAQUE_KEYS:
        return True
    return key == "data" and parent.get("type") in ("base64", "redacted_thinking")


def map_readable(
    value: Any, fn: Callable[[Any], Any], *, drop: bool = False, top: frozenset[str] = frozenset()
) -> Any:
    """``value`` with ``fn`` applied to every readable leaf and key (strings, numbers);
    opaque values (the allow-list) kept as they are, or left out with ``drop``; so are the
    ``top`` keys of the outermost object."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if _opaque(value, key) or key in top:
                if not drop:
                    out[key] = item
                continue
            out[fn(key) if isinstance(key, str) else key] = map_readable(item, fn, drop=drop)
        return out
    if isinstance(value, list):
        return [map_readable(item, fn, drop=drop) for item in value]
    if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return fn(value)
    return value


def _host(url: Any) -> str:
    if not isinstance(url, str):
        return ""
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _url_sources(value: Any, found: set[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        source = value.get("source")
        if isinstance(source, dict) and source.get("type") == "url":
            found.add(("url_source", _host(source.get("url"))))
        for item in value.values():
            _url_sources(item, found)
    elif isinstance(value, list):
        for item in value:
            _url_sources(item, found)


def provider_tools(request: MessagesRequest) -> list[dict[str, str]]:
    """What the provider itself will reach out to: MCP servers (by host), server tools (by
    type, any host) and URL sources (by host), sorted, each once."""
    found: set[tuple[str, str]] = set()
    for server in request.parameters.get("mcp_servers") or []:
        found.add(("mcp", _host(server.get("url"))))
    for tool in request.parameters.get("tools") or []:
        kind = tool.get("type")
        if isinstance(kind, str) and kind != "custom":
            found.add((_DATED.sub("", kind), ""))
    _url_sources([request.system, request.messages], found)
    return [{"type": kind, "target": target} for kind, target in sorted(found)]


def _check_block(block: Any, where: str, *, nested: bool = False) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise MessagesRequestError(f"{where} must be a content block with a type")
    kind = block["type"]
    if kind not in (_NESTED_BLOCKS if nested else _BLOCKS):
        raise MessagesRequestError(
            f"{where}: content block type {kind!r} is not supported by the sidecar "
            f"(its text could not be classified)"
        )
    if kind == "text" and not isinstance(block.get("text"), str):
        raise MessagesRequestError(f"{where}.text must be a string")
    if kind == "tool_use" and not isinstance(block.get("name"), str):
        raise MessagesRequestError(f"{where}.name must be a string")
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            for i, inner in enumerate(content):
                _check_block(inner, f"{where}.content[{i}]", nested=True)
        elif content is not None and not isinstance(content, str):
            raise MessagesRequestError(f"{where}.content must be a string or content blocks")
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "content":
            inner = source.get("content")
            if isinstance(inner, list):
                for i, part in enumerate(inner):
                    _check_block(part, f"{where}.source.content[{i}]", nested=True)
            elif not isinstance(inner, str):
                raise MessagesRequestError(f"{where}.source.content must be text or blocks")


def _check_parameters(parameters: Mapping[str, Any]) -> None:
    tools = parameters.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and "name" in t for t in tools)
    ):
        raise MessagesRequestError("tools must be an array of tools, each with a name")
    servers = parameters.get("mcp_servers")
    if servers is not None and not (
        isinstance(servers, list)
        and all(isinstance(s, dict) and isinstance(s.get("url"), str) for s in servers)
    ):
        raise MessagesRequestError("mcp_servers must be an array of servers, each with a url")
    for name in NUMERIC_PARAMETERS - {"max_tokens"}:
        value = parameters.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise MessagesRequestError(f"{name} must be a number")


def parse_request(body: Mapping[str, Any], *, count_tokens: bool = False) -> MessagesRequest:
    """A Messages (or count_tokens) request body, checked. ``max_tokens`` is required (as
    the API requires it) except for count_tokens."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MessagesRequestError("model is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MessagesRequestError("messages must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise MessagesRequestError(
                f"messages[{i}] must be an object with role user or assistant"
            )
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"messages[{i}].content[{j}]")
        elif not isinstance(content, str):
            raise MessagesRequestError(f"messages[{i}].content must be a string or content blocks")
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise MessagesRequestError(f"system[{i}] must be a text block")
            _check_block(block, f"system[{i}]")
    elif system is not None and not isinstance(system, str):
        raise MessagesRequestError("system must be a string or text blocks")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise MessagesRequestError("stream must be a boolean")
    parameters = {k: v for k, v in body.items() if k not in _OWN}
    if count_tokens:
        extra = sorted(set(parameters) - _COUNT_KEYS)
        if extra:
            raise MessagesRequestError(f"count_tokens does not take {extra[0]!r}")
        if stream:
            raise MessagesRequestError("count_tokens cannot stream")
    elif not _positive_int(parameters.get("max_tokens")):
        raise MessagesRequestError("max_tokens is required and must be a positive integer")
    _check_parameters(parameters)
    return MessagesRequest(model, messages, system, parameters, stream)


def redact_request(request: MessagesRequest, classes: Iterable[str]) -> MessagesRequest:
    """The request with ``classes`` redacted from everything it sends but the allow-listed
    opaque values (image data, signatures, credentials, the numeric parameters)."""
    wanted = list(classes)
    if not wanted:
        return request
    whole = map_readable(
        request._whole(), lambda value: redact(value, wanted), top=NUMERIC_PARAMETERS
    )
    system, messages = whole.pop("system"), whole.pop("messages")
    servers = request.parameters.get("mcp_servers")
    if isinstance(servers, list):  # the credentials back, as they were
        whole["mcp_servers"] = [
            redacted | {k: v for k, v in server.items() if k in CREDENTIAL_KEYS}
            for redacted, server in zip(whole["mcp_servers"], servers, strict=True)
        ]
    return MessagesRequest(request.model, messages, system, whole, request.stream)


def _cap_thinking(body: dict[str, Any]) -> None:
    """Extended thinking needs ``MIN_THINKING_BUDGET <= budget_tokens < max_tokens``: after the
    obligation lowered ``max_tokens``, the budget is lowered with it, or thinking turned off
    when no budget that large fits."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not _positive_int(budget) or budget < body["max_tokens"]:
        return
    if body["max_tokens"] - 1 >= MIN_THINKING_BUDGET:
        body["thinking"] = thinking | {"budget_tokens": body["max_tokens"] - 1}
    else:
        body["thinking"] = {"type": "disabled"}


def provider_body(
    request: MessagesRequest, provider_model: str, *, max_tokens: int | None
) -> dict[str, Any]:
    """The provider request: the alias replaced by the provider's model, ``max_tokens``
    lowered to the obligation (Messages always has one), thinking's budget with it."""
    body: dict[str, Any] = {"model": provider_model or request.model}
    if request.system is not None:
        body["system"] = request.system
    body["messages"] = request.messages
    body.update(request.parameters)
    if max_tokens is not None and "max_tokens" in body and body["max_tokens"] > max_tokens:
        body["max_tokens"] = max_tokens
        _cap_thinking(body)
    if request.stream:
        body["stream"] = True
    return body


def count_tokens_body(request: MessagesRequest, provider_model: str) -> dict[str, Any]:
    body = provider_body(request, provider_model, max_tokens=None)
    body.pop("stream", None)
    return body
