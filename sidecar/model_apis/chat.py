"""OpenAI chat completions (``POST /v1/chat/completions``): ``messages`` in, ``choices`` out,
streamed as ``chat.completion.chunk`` events ended by ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from sidecar.classify import classify
from sidecar.model_apis.base import (
    Answer,
    OpenAiApi,
    ParsedRequest,
    RedactorFactory,
    SseEvent,
    redact_deep,
    with_decoded_json,
)
from sidecar.model_calls import (
    ModelCall,
    Usage,
    completion_text,
    estimate_usage,
    parse_model_request,
    policy_arguments,
    provider_body,
    reservation_estimate,
    usage_from,
)
from sidecar.relay.errors import UpstreamBadResponse, UpstreamStreamInterrupted
from sidecar.relay.scrub import Scrubber
from sidecar.relay.settings import ModelSettings

__all__ = ["CHAT", "ChatApi"]

_OWN = ("model", "messages", "stream", "stream_options")


class ChatApi(OpenAiApi):
    name: ClassVar[str] = "chat"
    rpc: ClassVar[str] = "ChatCompletions"
    route: ClassVar[str] = "/v1/chat/completions"
    provider_path: ClassVar[str] = "/chat/completions"
    content_field: ClassVar[str] = "messages"
    own: ClassVar[tuple[str, ...]] = _OWN

    def parse(self, call: ModelCall) -> ParsedRequest:
        messages, parameters = parse_model_request(call)
        return ParsedRequest(
            {"messages": messages}, parameters, policy_arguments(messages, parameters)
        )

    def classified(self, content: dict[str, Any]) -> Any:
        return content["messages"]

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
        return provider_body(
            model,
            ModelSettings(provider="", model=model),
            content["messages"],
            parameters,
            max_tokens=max_tokens,
            stream=stream,
            default_max_tokens=default_max_tokens,
        )

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int:
        return reservation_estimate(content["messages"], body)  # (n choices counted)

    def estimate(self, content: dict[str, Any], completion: str) -> Usage:
        return estimate_usage(content["messages"], completion)

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer:
        if not isinstance(answer.get("choices"), list):
            raise UpstreamBadResponse("the provider's answer is not a chat.completion object")
        answer = scrubber.value(answer)
        found = classify(with_decoded_json(answer.get("choices")))
        if classes:  # (tool-call arguments: the JSON inside them too)
            answer = answer | {"choices": redact_deep(answer["choices"], classes)}
        answer["model"] = alias
        return Answer(answer, completion_text(answer), found, usage_from(answer))

    def stream(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> ChatStream:
        return ChatStream(alias, redactor, scrubber)

    def stream_end(self) -> bytes:
        return b"data: [DONE]\n\n"


class ChatStream:
    """``chat.completion.chunk`` events; the text of each choice's deltas redacted as one
    stream (one redactor per choice ``index``: with ``n`` > 1 the choices interleave)."""

    def __init__(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> None:
        self._alias = alias
        self._factory = redactor
        self._redactors: dict[int, Any] = {}
        self._scrubber = scrubber
        self._raw: list[str] = []
        self._text: list[str] = []
        self.done = False
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def raw(self) -> str:
        return "".join(self._raw)

    def feed(self, event: SseEvent) -> list[dict[str, Any]]:
        if event.data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(event.data)
        except ValueError as exc:
            raise UpstreamBadResponse("a streamed chunk is not JSON") from exc
        if not isinstance(chunk, dict):
            raise UpstreamBadResponse("a streamed chunk is not a JSON object")
        if "error" in chunk:
            raise UpstreamStreamInterrupted("the provider sent an error in the stream")
        self.usage = usage_from(chunk) or self.usage
        chunk["model"] = self._alias
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) and not isinstance(index, bool) else 0
            redactor = self._redactors.get(index)
            if redactor is None:
                redactor = self._redactors[index] = self._factory()
            content = delta.get("content")
            if isinstance(content, str):
                self._raw.append(content)
                released = redactor.feed(content)
                if choice.get("finish_reason"):
                    released += redactor.flush()
                delta["content"] = released
                self._text.append(released)
            elif choice.get("finish_reason"):
                rest = redactor.flush()
                if rest:
                    delta["content"] = rest
                    self._text.append(rest)
        return [self._scrubber.value(chunk)]  # fields other than the text, too

    def flush(self) -> list[dict[str, Any]]:
        out = []
        for index, redactor in sorted(self._redactors.items()):
            rest = redactor.flush()
            if rest:
                self._text.append(rest)
                out.append(
                    {
                        "object": "chat.completion.chunk",
                        "model": self._alias,
                        "choices": [
                            {"index": index, "delta": {"content": rest}, "finish_reason": None}
                        ],
                    }
                )
        return out


CHAT = ChatApi()
