"""OpenAI embeddings (``POST /v1/embeddings``): ``input`` a string or an array of strings,
classified and redacted like a prompt; the answer is vectors (nothing to redact but the key),
its ``usage.prompt_tokens`` charged. Token arrays (``[1, 2, 3]``, ``[[1, 2]]``) are refused:
the sidecar cannot read them, so it cannot classify them, and an unread prompt may not leave.
No streaming: embeddings have none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from sidecar.model_apis.base import (
    Answer,
    ApiError,
    ParsedRequest,
    RedactorFactory,
    openai_error,
    sse_data,
)
from sidecar.model_apis.chat import ChatStream
from sidecar.model_calls import ModelCall, ModelRequestError, Usage
from sidecar.relay.errors import UpstreamBadResponse
from sidecar.relay.scrub import Scrubber
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.token_estimate import prompt_tokens

__all__ = ["EMBEDDINGS", "EmbeddingsApi", "UnclassifiableInput"]

_OWN = ("model", "input", "stream")


class UnclassifiableInput(ModelRequestError):
    code = "unclassifiable_input"


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(v, int) or (isinstance(v, list) and all(isinstance(t, int) for t in v))
            for v in value
        )
    ):
        raise UnclassifiableInput(
            "input as token arrays cannot be classified, so it is refused: send the text"
        )
    raise ModelRequestError("input must be a string or a non-empty array of strings")


class EmbeddingsApi:
    name: ClassVar[str] = "embeddings"
    rpc: ClassVar[str] = "Embeddings"
    route: ClassVar[str] = "/v1/embeddings"
    provider_path: ClassVar[str] = "/embeddings"
    formats: ClassVar[frozenset[str]] = frozenset({"openai"})

    def front_door_call(self, body: dict[str, Any]) -> tuple[str, str, bool]:
        parameters = {k: v for k, v in body.items() if k not in ("model", "input")}
        return json.dumps(body.get("input")), json.dumps(parameters), False

    def parse(self, call: ModelCall) -> ParsedRequest:
        if call.stream:
            raise ModelRequestError("embeddings cannot be streamed")
        try:
            value = loads_strict(call.messages_json or "null", "input")
            parameters = loads_strict(call.parameters_json or "{}", "parameters_json")
        except StrictJsonError as exc:
            raise ModelRequestError(str(exc)) from exc
        texts = _texts(value)
        if not isinstance(parameters, dict):
            raise ModelRequestError("parameters_json must be a JSON object")
        reserved = sorted(set(_OWN) & set(parameters))
        if reserved:
            raise ModelRequestError(f"parameter {reserved[0]!r} is not for embeddings")
        summary = {
            "parameters": parameters,
            "input": {"count": len(texts), "chars": sum(len(t) for t in texts)},
        }
        return ParsedRequest({"input": value}, parameters, summary)

    def classified(self, content: dict[str, Any]) -> Any:
        return content["input"]

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
        # (no output tokens: max_tokens has nothing to cap)
        return {"model": model, "input": content["input"], **parameters}

    def reservation(self, content: dict[str, Any], body: Mapping[str, Any]) -> int:
        return prompt_tokens(_texts(content["input"]))  # the input only: nothing is generated

    def estimate(self, content: dict[str, Any], completion: str) -> Usage:
        prompt = prompt_tokens(_texts(content["input"]))
        return Usage(prompt, 0, prompt, estimated=True)

    def unary(
        self, answer: dict[str, Any], alias: str, classes: tuple[str, ...], scrubber: Scrubber
    ) -> Answer:
        if not isinstance(answer.get("data"), list):
            raise UpstreamBadResponse("the provider's answer is not an embeddings list")
        answer = scrubber.value(answer)
        answer["model"] = alias
        usage = answer.get("usage")
        measured = None
        if isinstance(usage, dict):
            try:
                prompt = int(usage.get("prompt_tokens") or 0)
                measured = Usage(prompt, 0, int(usage.get("total_tokens") or prompt))
            except (TypeError, ValueError):
                measured = None
        return Answer(answer, "", [], measured)

    def stream(self, alias: str, redactor: RedactorFactory, scrubber: Scrubber) -> ChatStream:
        raise ModelRequestError("embeddings cannot be streamed")  # (parse refused it already)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        return openai_error(error)

    def stream_error(self, error: ApiError) -> bytes:
        return sse_data(openai_error(error))

    def stream_end(self) -> bytes:
        return b""

    def sse(self, value: dict[str, Any]) -> bytes:
        return sse_data(value)


EMBEDDINGS = EmbeddingsApi()
