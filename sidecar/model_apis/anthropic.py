"""The Anthropic Messages API on the model path (:class:`~sidecar.model_apis.base.ModelApi`):
``POST /v1/messages`` (unary and streamed) and ``POST /v1/messages/count_tokens``, served
only by providers of format ``anthropic``.

Requests: :mod:`sidecar.model_apis.anthropic_request`; answers, streams and errors:
:mod:`sidecar.model_apis.anthropic_answer`. A call's content is ``{"system", "messages"}``
(over gRPC ``messages_json`` may also be the bare messages array) and its parameters the
rest; once parsed, every parameter that may carry text (tools, mcp_servers, metadata,
stop_sequences, unknown keys, ...) joins the content (classified, redacted, audited per the
``log`` obligation) and only the numeric ones (``max_tokens``, ``temperature``, ``top_p``,
``top_k``) stay parameters.

count_tokens sends the prompt to the provider, so it is decided like a message (policy sees
``action.api: "messages"`` and ``arguments.count_tokens: true``; data classes, redaction and
denials apply) and counted as a call of its task (``input.task.calls``, so call limits and
rate limits apply), but never charged tokens: it reserves nothing and its usage is zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from sidecar.classify import classify
from sidecar.model_apis.anthropic_answer import (
    MessagesStream,
    MessagesUsage,
    answer_text,
    error_body,
    redact_answer,
    sse,
    usage_from_answer,
)
from sidecar.model_apis.anthropic_request import (
    NUMERIC_PARAMETERS,
    MessagesRequest,
    MessagesRequestError,
    parse_request,
    provider_body,
    redact_request,
)
from sidecar.model_apis.base import (
    Answer,
    ApiError,
    ParsedRequest,
    RedactorFactory,
    SseEvent,
    estimated_usage,
    json_value,
    parameters_object,
)
from sidecar.model_calls import ModelCall, ModelRequestError, Usage
from sidecar.relay.errors import UpstreamBadResponse, UpstreamStreamInterrupted
from sidecar.relay.scrub import Scrubber

__all__ = ["COUNT_TOKENS", "MESSAGES", "CountTokensApi", "MessagesApi"]

_CONTENT = ("system", "messages")
_OWN = frozenset({"model", "stream", *_CONTENT})


def _usage(usage: MessagesUsage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(usage.prompt_tokens, usage.output_tokens, usage.total_tokens)


def _request(
    content: Mapping[str, Any], parameters: Mapping[str, Any] | None = None
) -> MessagesRequest:
    """The request a parsed content (system, messages, text-bearing parameters) and the
    numeric parameters make."""
    rest = {k: v for k, v in content.items() if k not in _CONTENT}
    numeric = {k: v for k, v in (parameters or {}).items() if k in NUMERIC_PARAMETERS}
    return MessagesRequest("", list(content["messages"]), content.get("system"), rest | numeric)


def _content(request: MessagesRequest) -> dict[str, Any]:
    """The parts of a request that may carry text: all but the numeric parameters."""
    content: dict[str, Any] = {"messages": request.messages}
    if request.system is not None:
        content["system"] = request.system
    rest = {k: v for k, v in request.parameters.items() if k not in NUMERIC_PARAMETERS}
    return content | rest


class MessagesApi:
    """``POST /v1/messages``: Anthropic's Messages API."""

    name: ClassVar[str] = "messages"
    key: ClassVar[str] = "messages"  # in APIS (and ModelCall.api)
    rpc: ClassVar[str] = "Messages"
    route: ClassVar[str] = "/v1/messages"
    provider_path: ClassVar[str] = "/messages"
    formats: ClassVar[frozenset[str]] = frozenset({"anthropic"})
    count_tokens: ClassVar[bool] = False

    def front_door_call(self, body: dict[str, Any]) -> tuple[str, str, bool]:
        content = {k: body[k] for k in _CONTENT if k in body}
        parameters = {k: v for k, v in body.items() if k not in _OWN}
        return json.dumps(content), json.dumps(parameters), body.get("stream") is True

    def parse(self, call: ModelCall) -> ParsedRequest:
        content = json_value(call.messages_json or "null", "messages_json")
        parameters = parameters_object(
            call.parameters_json, _OWN, "is set by the sidecar, not here"
        )
        if isinstance(content, list):  # gRPC callers may send the bare messages array
            content = {"messages": content}
        if not isinstance(content, dict) or set(content) - set(_CONTENT):
            raise ModelRequestError("the content must be {system, messages}")
        body = {"model": call.model, **content, **parameters, "stream": call.stream}
        try:
            request = parse_request(body, count_tokens=self.count_tokens)
        except MessagesRequestError as exc:
            raise ModelRequestError(str(exc)) from exc
        summary = request.policy_arguments()
        if self.count_tokens:
            summary["count_tokens"] = True
        numeric = {k: v for k, v in request.parameters.items() if k in NUMERIC_PARAMETERS}
        return ParsedRequest(_content(request), numeric, summary)

    def classified(self, content: dict[str, Any]) -> Any:
        """Everything the request sends but the allow-listed opaque values."""
        return _request(content).readable()

    def redact(self, content: dict[str, Any], classes: tuple[str, ...]) -> dict[str, Any]:
        """Everything but the allow-listed opaque values (image data, signatures, an MCP
        server's credential) is redacted; those are left byte-exact."""
        return _content(redact_request(_request(content), classes))

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
        request = _request(content, parameters)
        request = MessagesRequest(
            model, request.messages, request.system, request.parameters, stream
        )
        return provider_body(request, model, max_tokens=max_tokens)

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int:
        request = _request(content, body)  # (the max_tokens sent, after the obligation)
        return request.reservation(request.max_tokens)

    def estimate(self, content: dict[str, Any], completion: str) -> Usage:
        return estimated_usage(_request(content).texts(), completion)

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer:
        if answer.get("type") != "message" or not isinstance(answer.get("content"), list):
            raise UpstreamBadResponse("the provider's answer is not a Messages message")
        answer = scrubber.value(answer)
        found = classify(answer["content"])
        answer = redact_answer(answer, classes, alias)
        return Answer(answer, answer_text(answer), found, _usage(usage_from_answer(answer)))

    def stream(
        self, alias: str, redactor: RedactorFactory, scrubber: Scrubber
    ) -> AnthropicStreamHandler:
        return AnthropicStreamHandler(MessagesStream(alias, redactor), scrubber)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        details = dict(error.details)
        return error_body(
            error.status,
            error.code,
            error.message,
            decision_id=str(details.pop("decision_id", "") or ""),
            reasons=details.pop("reasons", ()) or (),
            approval_id=str(details.pop("approval_id", "") or ""),
            **details,
        )

    def stream_error(self, error: ApiError) -> bytes:
        return sse(self.error_body(error))

    def stream_end(self) -> bytes:
        return b""  # message_stop, relayed from the provider, ends the stream

    def sse(self, value: dict[str, Any]) -> bytes:
        return sse(value)


class CountTokensApi(MessagesApi):
    """``POST /v1/messages/count_tokens``: decided like a message, never charged."""

    key: ClassVar[str] = "count_tokens"  # policy still sees api "messages"
    rpc: ClassVar[str] = "CountTokens"
    route: ClassVar[str] = "/v1/messages/count_tokens"
    provider_path: ClassVar[str] = "/messages/count_tokens"
    count_tokens: ClassVar[bool] = True

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
        return super().provider_body(model, content, parameters, max_tokens=None, stream=False)

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int:
        return 0

    def estimate(self, content: dict[str, Any], completion: str) -> Usage:
        return Usage(0, 0, 0, estimated=True)

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer:
        tokens = answer.get("input_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise UpstreamBadResponse("the provider's answer is not a token count")
        return Answer(scrubber.value(answer), "", [], Usage(0, 0, 0))


class AnthropicStreamHandler:
    """A :class:`~sidecar.model_apis.base.StreamHandler` over :class:`MessagesStream`: every
    event scrubbed of the provider key; an ``error`` event from the provider breaks the
    stream (the sidecar then sends its own)."""

    def __init__(self, stream: MessagesStream, scrubber: Scrubber) -> None:
        self._stream = stream
        self._scrubber = scrubber

    @property
    def done(self) -> bool:
        return self._stream.complete

    @property
    def usage(self) -> Usage | None:
        return _usage(self._stream.usage)

    @property
    def text(self) -> str:
        return "".join(self._stream.text)

    @property
    def raw(self) -> str:
        return "".join(self._stream.raw)

    @property
    def delivered(self) -> str:
        """Every text the agent got (text, thinking, tool input JSON, citations): what a
        stream that broke off is charged for at least."""
        return "".join(self._stream.delivered)

    def feed(self, event: SseEvent) -> list[dict[str, Any]]:
        try:
            value = json.loads(event.data)
        except ValueError as exc:
            raise UpstreamBadResponse("a streamed event is not JSON") from exc
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise UpstreamBadResponse("a streamed event is not a typed JSON object")
        if value["type"] == "error" or event.event == "error":
            raise UpstreamStreamInterrupted("the provider sent an error in the stream")
        return [self._scrubber.value(out) for out in self._stream.handle(value)]

    def flush(self) -> list[dict[str, Any]]:
        return [self._scrubber.value(out) for out in self._stream.close()]


MESSAGES = MessagesApi()
COUNT_TOKENS = CountTokensApi()
