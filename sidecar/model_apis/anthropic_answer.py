"""Anthropic Messages answers: a unary ``message`` and a stream of events redacted for the
agent, the usage they report, and errors in Anthropic's shape.

Usage is ``input_tokens`` (plus cache creation and cache reads: input the provider processed)
and ``output_tokens``: from the answer, or in a stream from ``message_start`` and the last
``message_delta`` (its counts are cumulative). Errors are ``{"type": "error", "error":
{"type", "message", ...}}`` with the sidecar's stable ``code``, ``decision_id`` and
``reasons`` inside and ``request_id`` the decision id. A stream the sidecar ends early ends
with an ``event: error``: the ``anthropic`` SDK raises on it, while a close without
``message_stop`` would read as a complete message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.classify import StreamRedactor, redact
from sidecar.model_apis.anthropic_request import map_readable

__all__ = [
    "MessagesStream",
    "MessagesUsage",
    "answer_text",
    "error_body",
    "error_type",
    "redact_answer",
    "sse",
    "usage_from_answer",
]


@dataclass(frozen=True)
class MessagesUsage:
    """Usage as Anthropic reports it; ``prompt_tokens`` counts cache writes and reads too
    (they are input the provider processed)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def merged(self, usage: Mapping[str, Any]) -> MessagesUsage:
        """This usage updated by a later report (``message_delta``'s counts are cumulative)."""
        values = {}
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = usage.get(name)
            values[name] = (
                value
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0
                else getattr(self, name)
            )
        return MessagesUsage(**values)


def usage_from_answer(answer: Mapping[str, Any]) -> MessagesUsage | None:
    usage = answer.get("usage")
    return MessagesUsage().merged(usage) if isinstance(usage, dict) else None


def answer_text(answer: Mapping[str, Any]) -> str:
    """The text of a unary answer (its text blocks), for audit and the usage estimate."""
    return "".join(
        b.get("text", "")
        for b in answer.get("content") or []
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _leaf_redactor(new: Callable[[], StreamRedactor]) -> Callable[[Any], Any]:
    """A whole string redacted at once with a fresh stream redactor (numbers kept)."""

    def leaf(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        redactor = new()
        return redactor.feed(value) + redactor.flush()

    return leaf


# Keys whose values are structure, not text (left out of ``raw`` and ``delivered``).
_STRUCTURE = frozenset({"type", "id", "tool_use_id", "stop_reason", "media_type", "role", "model"})


def _same(value: Any) -> Any:
    return value


def _texts(value: Any, key: Any = "") -> list[str]:
    """The string leaves of a JSON value, structure (types, ids) left out."""
    if isinstance(value, str):
        return [] if key in _STRUCTURE or not value else [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _texts(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v, key)]
    return []


def redact_answer(answer: dict[str, Any], classes: Iterable[str], alias: str) -> dict[str, Any]:
    """The answer with ``classes`` redacted from everything its content blocks carry (text,
    citations, thinking, tool_use and server tool inputs, web search / fetch / MCP tool
    results, any other key) but the allow-listed opaque values (signatures, encrypted
    results), and from ``stop_sequence`` and ``container``; the alias as its model (ids,
    stop reason and usage untouched). A thinking block whose text was redacted keeps its
    signature, which then no longer verifies: sent back, the provider refuses it."""
    wanted = list(classes)
    if wanted:
        fields = {k: answer[k] for k in ("content", "stop_sequence", "container") if k in answer}
        answer = answer | map_readable(fields, lambda value: redact(value, wanted))
    return answer | {"model": alias}


# The delta field that carries text, per delta type (signature_delta is left alone).
_DELTA_TEXT = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}
# The text a content block starts with, per block type (its deltas continue it).
_START_TEXT = {"text": ("text", "text_delta"), "thinking": ("thinking", "thinking_delta")}


class MessagesStream:
    """Redacts a Messages stream event by event: each content block's text (text, tool input
    JSON, thinking; the text a block starts with included) through its own stream redactor,
    so a match split over deltas is caught and released only once whole; the rest goes out
    at the block's ``content_block_stop``. Everything else that carries text is redacted
    whole: ``message_start``'s message, a block's start (server tool inputs, web search /
    fetch / MCP tool results), ``citations_delta`` and any other delta, ``message_delta``.
    Reads usage from ``message_start`` and ``message_delta``; ``complete`` once
    ``message_stop`` arrived. ``raw`` is every text the provider sent (for the audit's
    response classes), ``text`` the answer text released, ``delivered`` every text
    released (text, thinking, tool input JSON, citations: what a broken stream is charged)."""

    def __init__(self, alias: str, redactor: Callable[[], StreamRedactor]) -> None:
        self._alias = alias
        self._new_redactor = redactor
        self._whole = _leaf_redactor(redactor)
        self._blocks: dict[int, tuple[str, StreamRedactor]] = {}
        self.usage: MessagesUsage | None = None
        self.complete = False
        self.raw: list[str] = []  # everything the provider sent that is text (audit classes)
        self.text: list[str] = []  # the answer text released to the agent
        self.delivered: list[str] = []  # every text released to the agent

    def _value(self, value: Any) -> Any:
        """A JSON value redacted whole (its opaque values untouched), its texts noted."""
        # (set apart by newlines: a text next to a streamed piece is a separate word)
        self.raw += [f"\n{t}\n" for t in _texts(map_readable(value, _same, drop=True))]
        out = map_readable(value, self._whole)
        self.delivered += [f"\n{t}\n" for t in _texts(map_readable(out, _same, drop=True))]
        return out

    def handle(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send the agent for one event from the provider (in order)."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.usage = (self.usage or MessagesUsage()).merged(usage)
                fields = {k: message[k] for k in ("content", "container") if k in message}
                event = event | {"message": message | self._value(fields) | {"model": self._alias}}
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.usage = (self.usage or MessagesUsage()).merged(usage)
            if "delta" in event:
                event = event | {"delta": self._value(event["delta"])}
            return [*self.close(), event]  # a block the provider left open: its rest first
        elif kind == "message_stop":
            self.complete = True
        elif kind == "content_block_start":
            return [self._start(event)]
        elif kind == "content_block_delta":
            return self._delta(event)
        elif kind == "content_block_stop":
            return [*self._flush(event.get("index")), event]
        return [event]

    def _start(self, event: dict[str, Any]) -> dict[str, Any]:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return event
        field, delta_kind = _START_TEXT.get(str(block.get("type")), ("", ""))
        start = block.get(field) if field else None
        if isinstance(start, str):  # continued by its deltas: through the block's redactor
            released = self._feed(event.get("index"), delta_kind, start)
            rest = self._value({k: v for k, v in block.items() if k != field})
            return event | {"content_block": rest | {field: released}}
        return event | {"content_block": self._value(block)}

    def _feed(self, index: Any, kind: str, piece: str) -> str:
        index = index if isinstance(index, int) else -1
        if index not in self._blocks:
            self._blocks[index] = (kind, self._new_redactor())
        released = self._blocks[index][1].feed(piece)
        self.raw.append(piece)
        self.delivered.append(released)
        if kind == "text_delta":
            self.text.append(released)
        return released

    def _delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return [event]
        kind = str(delta.get("type"))
        key = _DELTA_TEXT.get(kind)
        piece = delta.get(key) if key is not None else None
        if key is None or not isinstance(piece, str):
            # citations_delta and the like: redacted whole (signature_delta: opaque)
            return [event | {"delta": self._value(delta)}]
        released = self._feed(event.get("index"), kind, piece)
        if not released:
            return []  # held back until the match can no longer grow
        return [event | {"delta": delta | {key: released}}]

    def _flush(self, index: Any) -> list[dict[str, Any]]:
        held = self._blocks.pop(index if isinstance(index, int) else -1, None)
        if held is None:
            return []
        kind, redactor = held
        rest = redactor.flush()
        if not rest:
            return []
        self.delivered.append(rest)
        if kind == "text_delta":
            self.text.append(rest)
        key = _DELTA_TEXT[kind]
        return [{"type": "content_block_delta", "index": index, "delta": {"type": kind, key: rest}}]

    def close(self) -> list[dict[str, Any]]:
        """What the redactors still hold (redacted), for a stream that broke off."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._blocks):
            out += self._flush(index)
        return out


def sse(event: Mapping[str, Any]) -> bytes:
    """One server-sent event as Anthropic sends it: named after its ``type``."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "approval_required",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error)."""
    return _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    decision_id: str = "",
    reasons: Iterable[str] = (),
    approval_id: str = "",
    upstream_body: bytes = b"",
    **extra: Any,
) -> dict[str, Any]:
    """Anthropic's error shape with the sidecar's code and decision inside. A provider's own
    Anthropic-shaped error keeps its type and message (the body already scrubbed)."""
    kind = error_type(status)
    if upstream_body:
        try:
            upstream = json.loads(upstream_body)
        except ValueError:
            upstream = None
        error = upstream.get("error") if isinstance(upstream, dict) else None
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            kind = error["type"]
            message = str(error.get("message") or message)
    error: dict[str, Any] = {
        "type": kind,
        "message": message or code,
        "code": code,
        "decision_id": decision_id,
        "reasons": list(reasons),
    }
    if approval_id:
        error["approval_id"] = approval_id
    error.update({k: v for k, v in extra.items() if v})
    return {"type": "error", "error": error, "request_id": decision_id}
