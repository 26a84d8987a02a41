"""The OpenAI Responses API (``POST /v1/responses``): ``input`` (a string or a list of items:
messages with ``input_text`` parts, ``function_call`` / ``function_call_output`` items, ...)
and ``instructions`` in; a ``response`` object out, or streamed as ``response.*`` events that
end with ``response.completed`` (or ``response.incomplete``); no ``[DONE]``.

What is classified and redacted: ``instructions``, every string anywhere in ``input`` (with
each ``input_file.file_data`` decoded: a file that is not base64 UTF-8 text is refused as
``unclassifiable_input``), and every parameter but the numbers, booleans and enums
(``base.NON_TEXT_PARAMETERS``: tools and their schemas, ``prompt.variables``, ``text.format``,
``metadata``... are checked, calls/models.py). JSON inside strings (function-call arguments) is
decoded and checked too. ``background: true`` is refused (its answer would be fetched past the
sidecar: never checked nor charged). Provider-side tools (mcp, web_search, ...) reach policy as
``action.arguments.provider_tools`` with their target host; stored-object ids
(``previous_response_id``, ``conversation``, ``file_id``, ``item_reference``) as
``action.arguments.references``.
Streamed answers: every ``*.delta`` text is redacted as one stream per part (output item,
content part), across event boundaries; what a redactor still holds goes out as one more delta
before that part's ``*.done`` event; every other event (``*.done``, ``response.completed``,
which repeat the whole text) is redacted whole. ``logprobs`` are dropped from answers: they
would spell the text out token by token past the redactor.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from sidecar.classify import StreamRedactor, classify
from sidecar.model_apis.base import (
    Answer,
    ApiError,
    OpenAiApi,
    ParsedRequest,
    RedactorFactory,
    SseEvent,
    estimated_usage,
    json_value,
    openai_error,
    parameters_object,
    redact_deep,
    sse_named,
    with_decoded_json,
)
from sidecar.model_apis.responses_input import file_parts, file_text, provider_tools, references
from sidecar.model_calls import ModelCall, ModelRequestError, Usage
from sidecar.relay.errors import UpstreamBadResponse, UpstreamStreamInterrupted
from sidecar.relay.scrub import Scrubber
from sidecar.token_estimate import reservation_tokens

__all__ = ["RESPONSES", "ResponsesApi", "ResponsesStream"]

_OWN = ("model", "input", "stream")
_CAP = "max_output_tokens"
_ROLES = frozenset({"user", "system", "developer", "assistant"})
# Parameters the provider reads as prompt (counted in the reservation).
_PROMPT_PARAMETERS = ("tools", "tool_choice", "text")
# Final events: the stream is complete (response.failed is the provider's failure).
_FINAL = frozenset({"response.completed", "response.incomplete"})


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def strings(value: Any) -> list[str]:
    """Every string in a JSON value (object keys excluded), depth first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    return []


def _check_input(value: Any) -> list[dict[str, Any]]:
    """The input as a list of items; a string is one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ModelRequestError("input must be a string or a non-empty array of items")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ModelRequestError(f"input[{i}] must be an object")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise ModelRequestError(f"input[{i}].type must be a string")
        if kind == "message" and item.get("role") not in _ROLES:
            raise ModelRequestError(
                f"input[{i}] is a message and needs a role ({', '.join(sorted(_ROLES))})"
            )
    return value


def _tool_names(tools: Any) -> list[str]:
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            function = tool.get("function") if isinstance(tool.get("function"), dict) else {}
            names.append(str(tool.get("name") or function.get("name") or tool.get("type", "")))
    return sorted(names)


def _summary(content: dict[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    items = _check_input(content["input"])
    summary = dict(parameters)
    tools = summary.get("tools")
    if "tools" in summary:
        summary["tools"] = _tool_names(summary["tools"])
    return {
        "parameters": summary,
        "provider_tools": provider_tools(tools),
        "references": references(content["input"])
        | {
            "previous_response_id": str(parameters.get("previous_response_id") or ""),
            "conversation": str(parameters.get("conversation") or ""),
        },
        "input": {
            "count": len(items),
            "chars": sum(len(s) for s in strings(content["input"])),
            "roles": sorted({str(i["role"]) for i in items if isinstance(i.get("role"), str)}),
            "types": sorted({str(i.get("type", "message")) for i in items}),
        },
        "instructions": {"chars": len(content.get("instructions") or "")},
    }


def _usage(obj: Any) -> Usage | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    try:
        prompt = int(usage.get("input_tokens") or 0)
        completion = int(usage.get("output_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, total)


def _drop_logprobs(value: Any) -> Any:
    """The value without ``logprobs`` (token by token, they would bypass redaction)."""
    if isinstance(value, list):
        return [_drop_logprobs(v) for v in value]
    if isinstance(value, dict):
        return {k: ([] if k == "logprobs" else _drop_logprobs(v)) for k, v in value.items()}
    return value


def output_text(response: Mapping[str, Any]) -> str:
    """The text of a response's message items (what the SDK's ``output_text`` gives)."""
    parts = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    parts.append(str(part.get("text", "")))
    return "".join(parts)


class ResponsesApi(OpenAiApi):
    name: ClassVar[str] = "responses"
    rpc: ClassVar[str] = "Responses"
    route: ClassVar[str] = "/v1/responses"
    provider_path: ClassVar[str] = "/responses"
    content_field: ClassVar[str] = "input"
    own: ClassVar[tuple[str, ...]] = _OWN

    def parse(self, call: ModelCall) -> ParsedRequest:
        value = json_value(call.messages_json or "null", "input")
        _check_input(value)
        parameters = parameters_object(call.parameters_json, _OWN, "is set by the sidecar")
        if _CAP in parameters and parameters[_CAP] is None:
            del parameters[_CAP]
        elif _CAP in parameters and not _positive(parameters[_CAP]):
            raise ModelRequestError(f"{_CAP} must be a positive integer")
        content: dict[str, Any] = {"input": value}
        instructions = parameters.pop("instructions", None)
        if instructions is not None:
            if not isinstance(instructions, str):
                raise ModelRequestError("instructions must be a string")
            content["instructions"] = instructions
        previous = parameters.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise ModelRequestError("previous_response_id must be a string")
        conversation = parameters.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if conversation is not None and not isinstance(conversation, str):
            raise ModelRequestError("conversation must be a string or {id}")
        for key in ("n", "best_of"):
            if key in parameters:  # (a provider that read it would produce that many answers)
                raise ModelRequestError(f"{key} is not a Responses API parameter")
        if parameters.get("background") not in (None, False):
            # The answer would be fetched later, past the sidecar: it could be neither
            # redacted nor charged.
            raise ModelRequestError(
                "background responses are not served: the sidecar could neither check nor "
                "charge an answer fetched later; send the request without background"
            )
        for i, part in enumerate(file_parts(value)):
            file_text(part["file_data"], f"input_file[{i}].file_data")
        summary = _summary(content, parameters)
        if conversation is not None:
            summary["references"]["conversation"] = conversation
        return ParsedRequest(content, parameters, summary)

    def classified(self, content: dict[str, Any]) -> Any:
        """The content, with each input file's decoded text (classified like the input)."""
        files = [file_text(p["file_data"], "file_data") for p in file_parts(content)]
        return [content, files] if files else content

    def redact(self, content: dict[str, Any], classes: Any) -> dict[str, Any]:
        """The content redacted, input files decoded, redacted and encoded again."""
        classes = tuple(classes)

        def walk(v: Any) -> Any:
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, dict):
                if v.get("type") == "input_file" and isinstance(v.get("file_data"), str):
                    data = v["file_data"]
                    head = data.partition(",")[0] + "," if data.startswith("data:") else ""
                    text = redact_deep(file_text(data, "file_data"), classes)
                    rest = {k: walk(x) for k, x in v.items() if k != "file_data"}
                    return rest | {"file_data": head + base64.b64encode(text.encode()).decode()}
                return {k: walk(x) for k, x in v.items()}
            return redact_deep(v, classes)

        return walk(content)

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
        body: dict[str, Any] = {"model": model, **content, **parameters}
        if max_tokens is not None:
            body[_CAP] = min(body[_CAP], max_tokens) if _positive(body.get(_CAP)) else max_tokens
        if default_max_tokens is not None and _CAP not in body:
            body[_CAP] = default_max_tokens
        if stream:
            body["stream"] = True
        return body

    def _prompt_texts(self, content: dict[str, Any], body: Mapping[str, Any]) -> list[str]:
        texts = strings(content)
        texts += [json.dumps(body[k], ensure_ascii=False) for k in _PROMPT_PARAMETERS if k in body]
        return texts

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int:
        cap = body.get(_CAP)
        return reservation_tokens(
            self._prompt_texts(content, body), cap if _positive(cap) else None
        )

    def estimate(self, content: dict[str, Any], completion: str) -> Usage:
        return estimated_usage(strings(content), completion)

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer:
        if not isinstance(answer.get("output"), list):
            raise UpstreamBadResponse("the provider's answer is not a response object")
        answer = scrubber.value(answer)
        found = classify(with_decoded_json(answer.get("output")))
        answer = _drop_logprobs(redact_deep(answer, classes) if classes else answer)
        answer["model"] = alias
        return Answer(answer, output_text(answer), found, _usage(answer))

    def stream(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> ResponsesStream:
        return ResponsesStream(alias, redactor, scrubber)

    def stream_error(self, error: ApiError) -> bytes:
        """An ``error`` event; its ``error`` object (the OpenAI error with the code and the
        decision id) is what makes the SDK raise ``APIError`` instead of reading on."""
        body = openai_error(error)
        return sse_named(
            {"type": "error", "code": error.code, "message": error.message, "param": None} | body
        )

    def stream_end(self) -> bytes:
        return b""  # response.completed was the end

    def sse(self, value: dict[str, Any]) -> bytes:
        return sse_named(value)


class ResponsesStream:
    """``response.*`` events, each text part redacted as one stream (see the module doc)."""

    def __init__(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> None:
        self._alias = alias
        self._redactor = redactor
        self._scrubber = scrubber
        self._parts: dict[tuple[Any, ...], StreamRedactor] = {}
        self._ids: dict[tuple[Any, ...], Any] = {}
        self._raw: list[str] = []
        self._text: list[str] = []
        self._sequence = 0
        self.done = False
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def raw(self) -> str:
        return "".join(self._raw)

    @staticmethod
    def _key(kind: str, event: Mapping[str, Any]) -> tuple[Any, ...]:
        """One text stream per part, as the SDK accumulates them: by output and content
        index (an ``item_id`` that changes mid-part must not split a secret in two)."""
        return (
            kind,
            event.get("output_index"),
            event.get("content_index"),
            event.get("summary_index"),
        )

    def _numbered(self, event: dict[str, Any]) -> dict[str, Any]:
        if "sequence_number" in event:
            event["sequence_number"] = self._sequence
        self._sequence += 1
        return event

    def _whole(self, event: dict[str, Any]) -> dict[str, Any]:
        """An event that is not a delta: every string in it redacted at once."""
        redacted = self._redactor.value(event)
        return _drop_logprobs(redacted)

    def feed(self, event: SseEvent) -> list[dict[str, Any]]:
        try:
            data = json.loads(event.data)
        except ValueError as exc:
            raise UpstreamBadResponse("a streamed event is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamBadResponse("a streamed event is not a JSON object")
        kind = str(data.get("type") or event.event)
        if kind in ("error", "response.failed"):
            raise UpstreamStreamInterrupted(f"the provider's stream reported {kind}")
        out: list[dict[str, Any]] = []
        if kind.endswith(".delta") and isinstance(data.get("delta"), str):
            key = self._key(kind[: -len(".delta")], data)
            redactor = self._parts.get(key)
            if redactor is None:
                redactor = self._parts[key] = self._redactor()
            self._raw.append(data["delta"])
            self._ids[key] = data.get("item_id")
            released = redactor.feed(data["delta"])
            self._text.append(released)
            data["delta"] = released
            out.append(self._numbered(_drop_logprobs(self._scrubber.value(data))))
            return out
        if kind.endswith(".done"):
            key = self._key(kind[: -len(".done")], data)
            redactor = self._parts.pop(key, None)
            rest = redactor.flush() if redactor is not None else ""
            if rest:
                self._text.append(rest)
                extra = {
                    k: v
                    for k, v in data.items()
                    if k in ("item_id", "output_index", "content_index", "summary_index")
                }
                delta = {"type": kind[: -len(".done")] + ".delta", **extra, "delta": rest}
                out.append(self._numbered(delta | {"sequence_number": 0, "logprobs": []}))
        if kind in _FINAL:
            out += self.flush()  # parts whose *.done never came: their rest before the end
        response = data.get("response")
        if isinstance(response, dict):
            response["model"] = self._alias
            self.usage = _usage(response) or self.usage
        out.append(self._numbered(self._whole(data)))
        if kind in _FINAL:
            self.done = True
        return out

    def flush(self) -> list[dict[str, Any]]:
        out = []
        for key, redactor in list(self._parts.items()):
            rest = redactor.flush()
            if rest:
                self._text.append(rest)
                out.append(
                    self._numbered(
                        {
                            "type": f"{key[0]}.delta",
                            "item_id": self._ids.get(key),
                            "output_index": key[1],
                            "content_index": key[2] or 0,
                            "delta": rest,
                            "sequence_number": 0,
                            "logprobs": [],
                        }
                    )
                )
        self._parts.clear()
        return out


RESPONSES = ResponsesApi()
