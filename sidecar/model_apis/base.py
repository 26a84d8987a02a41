"""What one model API is, so that the guarded model path (sidecar/calls/models.py) and the
front door (sidecar/frontdoor.py) serve every API the same way, and a new API is a module,
not another branch.

An API supplies (:class:`ModelApi`):

- its names: ``name`` (``action.api`` for policy: chat, responses, embeddings, messages),
  ``rpc`` (the front door's audit ``rpc``), ``route`` (the front door's path), ``provider_path``
  (appended to the provider's ``base_url``), ``formats`` (the provider formats that serve it);
- :meth:`ModelApi.front_door_call`: an HTTP body split into the parts a :class:`ModelCall`
  carries (the same split gRPC callers make themselves);
- :meth:`ModelApi.parse`: a :class:`ModelCall` into a :class:`ParsedRequest` (the content
  that is classified and redacted, the parameters passed through, the policy summary);
- :meth:`ModelApi.provider_body`: the request the provider gets (the provider's model name,
  the redacted content, the ``max_tokens`` obligation on this API's own field);
- :meth:`ModelApi.reservation`: the tokens to reserve (``token_estimate.reservation_tokens``);
- :meth:`ModelApi.unary`: a unary answer checked, redacted and measured (:class:`Answer`);
- :meth:`ModelApi.stream`: a :class:`StreamHandler` for one streamed answer;
- :meth:`ModelApi.error_body`, :meth:`ModelApi.stream_error`, :meth:`ModelApi.stream_end`,
  :meth:`ModelApi.sse`: the API's own error shape and event framing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sidecar.classify import StreamRedactor, redact
from sidecar.model_calls import ModelCall, ModelRequestError, Usage
from sidecar.relay.models import SseEvent
from sidecar.relay.scrub import Scrubber
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.token_estimate import estimated_tokens, prompt_tokens

__all__ = [
    "Answer",
    "ApiError",
    "ModelApi",
    "OpenAiApi",
    "ParsedRequest",
    "RedactorFactory",
    "SseEvent",
    "StreamHandler",
    "estimated_usage",
    "json_value",
    "openai_error",
    "parameters_object",
    "provider_tool",
    "redact_deep",
    "sse_data",
    "sse_named",
    "strip_credentials",
    "text_parameters",
    "with_decoded_json",
]


@dataclass
class ParsedRequest:
    """A request as the guarded path needs it.

    ``content`` holds the fields that carry the agent's texts (chat: ``messages``; responses:
    ``input`` and ``instructions``; embeddings: ``input``): they are classified, redacted
    per policy and audited per the ``log`` obligation. ``parameters`` is passed through.
    ``summary`` is ``action.arguments`` (never the prompt itself)."""

    content: dict[str, Any]
    parameters: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class Answer:
    """A unary answer: as the agent gets it (redacted, scrubbed, the alias as model), its
    text (for the audit and an estimate), the classes found before redaction, the usage."""

    body: dict[str, Any]
    text: str
    classes: list[str]
    usage: Usage | None


@dataclass(frozen=True)
class ApiError:
    """A call that did not complete, as the front door reports it: HTTP status, error type,
    stable code, message, and the details (decision id, reasons, approval id and url)."""

    status: int
    type: str
    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    # A provider's own error answer (JSON, the key scrubbed), for an API that renders it.
    upstream: Mapping[str, Any] | None = None


class StreamHandler(Protocol):
    """One streamed answer. ``feed`` takes each provider event and returns the events for the
    agent (redacted across event boundaries, the key scrubbed, the alias as model); ``done``
    turns true at the API's final event (the relay then stops reading: a stream that ends
    before it is broken); ``flush`` returns what redactors still hold, as events, when the
    stream broke. ``text`` is what reached the agent, ``raw`` what the provider sent."""

    done: bool
    usage: Usage | None

    def feed(self, event: SseEvent) -> list[dict[str, Any]]: ...

    def flush(self) -> list[dict[str, Any]]: ...

    @property
    def text(self) -> str: ...

    @property
    def raw(self) -> str: ...


@dataclass(frozen=True)
class RedactorFactory:
    """The answer's redaction: called, a fresh :class:`StreamRedactor` for one text stream
    (``redact_response`` classes and the provider key, held back across event boundaries);
    :meth:`value` redacts a whole JSON value the same way at once."""

    classes: tuple[str, ...]
    scrubber: Scrubber

    def __call__(self) -> StreamRedactor:
        return self.scrubber.stream(self.classes)

    def value(self, value: Any) -> Any:
        return self.scrubber.value(redact_deep(value, self.classes) if self.classes else value)


class ModelApi(Protocol):
    """One model API (see the module docstring for each part's job)."""

    name: ClassVar[str]
    rpc: ClassVar[str]
    route: ClassVar[str]
    provider_path: ClassVar[str]
    formats: ClassVar[frozenset[str]]

    def front_door_call(self, body: dict[str, Any]) -> tuple[str, str, bool]:
        """``(content_json, parameters_json, stream)`` of a front-door body (``model`` removed
        by the caller)."""
        ...

    def parse(self, call: ModelCall) -> ParsedRequest: ...

    def classified(self, content: dict[str, Any]) -> Any:
        """What is classified for ``action.data_classes`` (default: the whole content)."""
        ...

    def provider_body(
        self,
        model: str,
        content: dict[str, Any],
        parameters: Mapping[str, Any],
        *,
        max_tokens: int | None,
        stream: bool,
        default_max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """``max_tokens``: policy's obligation, capping this API's output field (set to it when
        the agent gave none); ``default_max_tokens``: a budget's reserved cap, sent when
        neither the agent nor policy gave one."""
        ...

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int: ...

    def estimate(self, content: dict[str, Any], completion: str) -> Usage: ...

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer: ...

    def stream(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> StreamHandler:
        """A handler for one streamed answer: ``redactor()`` is a fresh redactor for one text
        stream (the ``redact_response`` classes and the provider key); ``redactor.value``
        redacts a whole event."""
        ...

    def error_body(self, error: ApiError) -> dict[str, Any]: ...

    def stream_error(self, error: ApiError) -> bytes: ...

    def stream_end(self) -> bytes: ...

    def sse(self, value: dict[str, Any]) -> bytes: ...


def openai_error(error: ApiError) -> dict[str, Any]:
    """OpenAI's error shape, ``{"error": {"message", "type", "code", "param", ...}}``."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "code": error.code,
            "param": None,
            **error.details,
        }
    }


class OpenAiApi:
    """What the OpenAI APIs (chat, Responses, embeddings) share: the provider format, the
    front-door split of a body into its content field and parameters, and OpenAI's error
    shape and ``data:`` framing (an API whose events are named overrides the framing)."""

    formats: ClassVar[frozenset[str]] = frozenset({"openai"})
    content_field: ClassVar[str]  # the body field that is the content (messages, input)
    own: ClassVar[tuple[str, ...]]  # the body fields that are not passed on as parameters

    def front_door_call(self, body: dict[str, Any]) -> tuple[str, str, bool]:
        parameters = {k: v for k, v in body.items() if k not in self.own}
        content = json.dumps(body.get(self.content_field))
        return content, json.dumps(parameters), bool(body.get("stream"))

    def error_body(self, error: ApiError) -> dict[str, Any]:
        return openai_error(error)

    def stream_error(self, error: ApiError) -> bytes:
        return sse_data(openai_error(error))

    def sse(self, value: dict[str, Any]) -> bytes:
        return sse_data(value)


def json_value(text: str, what: str) -> Any:
    """Strict JSON (``strict_json``) whose error is the caller's 400."""
    try:
        return loads_strict(text, what)
    except StrictJsonError as exc:
        raise ModelRequestError(str(exc)) from exc


def parameters_object(text: str, own: Collection[str], why: str) -> dict[str, Any]:
    """A call's ``parameters_json``: a JSON object that sets none of the fields the API owns
    (``why`` ends the error: who sets that field instead)."""
    parameters = json_value(text or "{}", "parameters_json")
    if not isinstance(parameters, dict):
        raise ModelRequestError("parameters_json must be a JSON object")
    reserved = sorted(set(own) & set(parameters))
    if reserved:
        raise ModelRequestError(f"parameter {reserved[0]!r} {why}")
    return parameters


def estimated_usage(texts: list[str], completion: str) -> Usage:
    """UTF-8 bytes (an upper bound for any script), used only when the provider reports no
    usage."""
    prompt = prompt_tokens(texts)
    produced = estimated_tokens(completion)
    return Usage(prompt, produced, prompt + produced, estimated=True)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse_data(value: Any) -> bytes:
    """An event with data only (chat completions)."""
    return b"data: " + _dumps(value) + b"\n\n"


def sse_named(value: dict[str, Any]) -> bytes:
    """An event named by its data's ``type`` (Responses, Anthropic Messages)."""
    return b"event: " + str(value.get("type", "")).encode() + b"\ndata: " + _dumps(value) + b"\n\n"


# -- Shared request/answer helpers (review findings H1, L4, M3, M4) -----------------------

# Top-level parameters that carry no text (numbers, booleans, enums): everything else a
# request sends is classified and redacted like the prompt (an allow-list of what is *not*
# text, so a new text-bearing field is checked by default).
NON_TEXT_PARAMETERS = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "seed",
        "temperature",
        "top_p",
        "top_k",
        "top_logprobs",
        "logprobs",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "store",
        "background",
        "service_tier",
        "truncation",
        "dimensions",
        "encoding_format",
    }
)
# Keys whose values are credentials (for a provider-side tool's server, say): never shown to
# policy nor written to the audit log.
CREDENTIAL_KEYS = frozenset(
    {
        "authorization",
        "authorization_token",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "x-api-key",
        "secret",
        "client_secret",
        "password",
        "headers",
    }
)
CREDENTIAL_MARKER = "[redacted]"


def text_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that may carry text (all but :data:`NON_TEXT_PARAMETERS`)."""
    return {k: v for k, v in parameters.items() if k not in NON_TEXT_PARAMETERS}


def strip_credentials(value: Any) -> Any:
    """A copy of a JSON value with every :data:`CREDENTIAL_KEYS` value (any depth, any case)
    replaced by :data:`CREDENTIAL_MARKER`."""
    if isinstance(value, list):
        return [strip_credentials(v) for v in value]
    if isinstance(value, dict):
        return {
            k: (
                CREDENTIAL_MARKER
                if str(k).lower() in CREDENTIAL_KEYS and v not in (None, "")
                else strip_credentials(v)
            )
            for k, v in value.items()
        }
    return value


def provider_tool(kind: str, url: Any = "") -> dict[str, str]:
    """A provider-side tool as policy sees it (``action.arguments.provider_tools``): its type
    and the host it reaches ("" when it names none)."""
    from urllib.parse import urlsplit

    target = ""
    if isinstance(url, str) and url:
        try:
            target = (urlsplit(url).hostname or "").lower()
        except ValueError:
            target = "invalid"
    return {"type": kind, "target": target}


def _json_text(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        decoded = json.loads(stripped)
    except ValueError:
        return None
    return decoded if isinstance(decoded, (dict, list)) else None


def with_decoded_json(value: Any) -> list[Any]:
    """``value`` and the decoded value of every string in it that is a JSON object or array
    (function-call arguments): ``"\\u0073k-..."`` escapes hide a secret from a classifier
    that reads only the encoded text."""
    found: list[Any] = [value]

    def walk(v: Any, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(v, str):
            decoded = _json_text(v)
            if decoded is not None:
                found.append(decoded)
                walk(decoded, depth + 1)
        elif isinstance(v, list):
            for x in v:
                walk(x, depth)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x, depth)

    walk(value, 0)
    return found


def redact_deep(value: Any, classes: tuple[str, ...] | list[str]) -> Any:
    """:func:`redact`, also inside strings that are JSON (re-encoded when they change)."""
    if not classes:
        return value

    def walk(v: Any, depth: int) -> Any:
        if isinstance(v, str):
            decoded = _json_text(v) if depth < 8 else None
            if decoded is not None:
                redacted = walk(decoded, depth + 1)
                if redacted != decoded:
                    return json.dumps(redacted, ensure_ascii=False)
            return redact(v, classes)
        if isinstance(v, list):
            return [walk(x, depth) for x in v]
        if isinstance(v, dict):
            return {redact(str(k), classes): walk(x, depth) for k, x in v.items()}
        return redact(v, classes)

    return walk(value, 0)
