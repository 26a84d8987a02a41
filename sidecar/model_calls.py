"""Model calls: the request every model API shares (:class:`ModelCall`), and what a chat
completion request means to policy and sends to the provider (sidecar/model_apis/chat.py
builds on these; the other APIs have their own modules there).

Policy sees a summary, not the prompt: ``action.arguments`` is ``{"parameters": {...},
"messages": {"count", "chars", "roles"}}`` (tool definitions by name only), while the data
classes found anywhere in the messages go to ``action.data_classes``. The prompt itself is
audited only as the ``log`` obligation allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.classify import classify, redact
from sidecar.errors import SidecarError
from sidecar.relay.settings import ModelSettings
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.token_estimate import (
    EstimateError,
    choices_of,
    estimated_tokens,
    prompt_tokens,
    reservation_tokens,
)

__all__ = [
    "ModelCall",
    "ModelRequestError",
    "Usage",
    "completion_text",
    "estimate_usage",
    "parse_model_request",
    "policy_arguments",
    "prompt_texts",
    "provider_body",
    "redact_choices",
    "reservation_estimate",
    "usage_from",
]

# Keys of the request the sidecar sets itself.
RESERVED = frozenset({"model", "messages", "stream", "stream_options"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ModelRequestError(SidecarError):
    code = "invalid_arguments"


@dataclass(frozen=True)
class ModelCall:
    """A CallModel / StreamModel request (or a front-door request), decoded. ``api`` names
    the model API (sidecar/model_apis/): for ``chat`` ``messages_json`` is the messages
    array; for the others it is the request's ``input`` and ``parameters_json`` the rest."""

    model: str
    messages_json: str
    parameters_json: str = ""
    task_id: str = ""
    intent: str = ""
    approval_id: str = ""
    no_wait: bool = False
    delegation_chain: tuple[str, ...] = ()
    stream: bool = False
    api: str = "chat"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.estimated,
        }


def _strict_json(text: str, what: str) -> Any:
    try:
        return loads_strict(text, what)
    except StrictJsonError as exc:
        raise ModelRequestError(str(exc)) from exc


def parse_model_request(call: ModelCall) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages (a non-empty list of ``{role, ...}``) and the other parameters."""
    messages = _strict_json(call.messages_json or "null", "messages_json")
    if not isinstance(messages, list) or not messages:
        raise ModelRequestError("messages must be a non-empty JSON array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ModelRequestError(
                f"messages[{i}] must be an object with a role ({', '.join(sorted(_ROLES))})"
            )
    parameters = _strict_json(call.parameters_json or "{}", "parameters_json")
    if not isinstance(parameters, dict):
        raise ModelRequestError("parameters_json must be a JSON object")
    reserved = sorted(RESERVED & set(parameters))
    if reserved:
        raise ModelRequestError(f"parameter {reserved[0]!r} is set by the sidecar, not the agent")
    for key in _TOKEN_LIMITS:
        # What policy caps must be what is sent: a limit is a positive integer, or absent
        # (null means "no limit", the same as leaving it out).
        if key in parameters and parameters[key] is None:
            del parameters[key]
        elif key in parameters and not _positive_int(parameters[key]):
            raise ModelRequestError(f"{key} must be a positive integer")
    try:  # the budget reserves the output cap once per choice: n must be what is sent
        choices_of(parameters.get("n"))
        choices_of(parameters.get("best_of"))  # (vLLM reads it: that many are generated)
    except EstimateError as exc:
        raise ModelRequestError(str(exc)) from exc
    return messages, parameters


_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def policy_arguments(
    messages: list[dict[str, Any]], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    summary = dict(parameters)
    if isinstance(summary.get("tools"), list):
        summary["tools"] = sorted(
            str((t.get("function") or {}).get("name", ""))
            for t in summary["tools"]
            if isinstance(t, dict)
        )
    return {
        "parameters": summary,
        "messages": {
            "count": len(messages),
            "chars": sum(len(_text_of(m.get("content"))) for m in messages),
            "roles": sorted({str(m["role"]) for m in messages}),
        },
    }


def message_classes(messages: list[dict[str, Any]]) -> list[str]:
    return classify(messages)


def provider_body(
    model: str,
    settings: ModelSettings,
    messages: list[dict[str, Any]],
    parameters: Mapping[str, Any],
    *,
    max_tokens: int | None,
    stream: bool,
    default_max_tokens: int | None = None,
) -> dict[str, Any]:
    """The provider request: the alias replaced by the provider's model name, ``max_tokens``
    capped by policy's obligation (set to it when the agent asked for none), or set to
    ``default_max_tokens`` (a budget's reserved cap) when neither gave one."""
    body: dict[str, Any] = {"model": settings.model or model, "messages": messages}
    body.update(parameters)
    if max_tokens is not None:
        for key in _TOKEN_LIMITS:
            if key in body:  # parse_model_request let only positive integers through
                body[key] = min(body[key], max_tokens) if _positive_int(body[key]) else max_tokens
        if not any(key in body for key in _TOKEN_LIMITS):
            body["max_tokens"] = max_tokens
    if default_max_tokens is not None and not any(key in body for key in _TOKEN_LIMITS):
        body["max_tokens"] = default_max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def completion_text(completion: Mapping[str, Any]) -> str:
    parts = []
    for choice in completion.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message") or choice.get("delta") or {}
            if isinstance(message, dict):
                parts.append(_text_of(message.get("content")))
    return "".join(parts)


def redact_choices(obj: dict[str, Any], classes: Iterable[str]) -> dict[str, Any]:
    """The completion with data classes replaced in its choices (ids and usage untouched)."""
    classes = list(classes)
    if not classes or not isinstance(obj.get("choices"), list):
        return obj
    return obj | {"choices": redact(obj["choices"], classes)}


def usage_from(obj: Mapping[str, Any]) -> Usage | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    try:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, total)


# Request parameters the provider tokenizes as prompt.
_PROMPT_PARAMETERS = ("tools", "functions", "response_format", "tool_choice")


def prompt_texts(
    messages: list[dict[str, Any]], parameters: Mapping[str, Any] | None = None
) -> list[str]:
    """Every text the provider tokenizes as prompt: each message's content, its other fields
    (tool calls and their arguments, names) as JSON, and the tool definitions."""
    texts = []
    for message in messages:
        texts.append(_text_of(message.get("content")))
        rest = {k: v for k, v in message.items() if k not in ("role", "content")}
        if rest:
            texts.append(json.dumps(rest, ensure_ascii=False))
    params = parameters or {}
    texts += [json.dumps(params[k], ensure_ascii=False) for k in _PROMPT_PARAMETERS if k in params]
    return texts


def reservation_estimate(messages: list[dict[str, Any]], body: Mapping[str, Any]) -> int:
    """Tokens to set aside before relay (sidecar.token_estimate): the prompt's bytes plus
    the completion cap the provider was sent, once per choice (``n``, or ``best_of`` when
    larger). With both ``max_tokens`` and ``max_completion_tokens`` sent, the *larger*
    counts: providers differ in which they obey (vLLM and SGLang read
    ``max_completion_tokens or max_tokens``)."""
    caps = [body[k] for k in _TOKEN_LIMITS if _positive_int(body.get(k))]
    choices = max(choices_of(body.get("n")), choices_of(body.get("best_of")))
    return reservation_tokens(prompt_texts(messages, body), max(caps) if caps else None, choices)


def estimate_usage(messages: list[dict[str, Any]], completion: str) -> Usage:
    """UTF-8 bytes (an upper bound for any script): used only when the provider reports no
    usage."""
    prompt = prompt_tokens(prompt_texts(messages))
    produced = estimated_tokens(completion)
    return Usage(prompt, produced, prompt + produced, estimated=True)
