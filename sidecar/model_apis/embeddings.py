"""OpenAI embeddings (``POST /v1/embeddings``): ``input`` a string or an array of strings,
classified and redacted like a prompt; the answer is vectors (nothing to redact but the key),
its ``usage.prompt_tokens`` charged. Token arrays (``[1, 2, 3]``, ``[[1, 2]]``) are refused:
the sidecar cannot read them, so it cannot classify them, and an unread prompt may not leave.
No streaming: embeddings have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sidecar.model_apis.base import (
    Answer,
    OpenAiApi,
    ParsedRequest,
    RedactorFactory,
    json_value,
    parameters_object,
)
from sidecar.model_apis.chat import ChatStream
from sidecar.model_calls import ModelCall, ModelRequestError, Usage
from sidecar.relay.errors import UpstreamBadResponse
from sidecar.relay.scrub import Scrubber
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


class EmbeddingsApi(OpenAiApi):
    name: ClassVar[str] = "embeddings"
    rpc: ClassVar[str] = "Embeddings"
    route: ClassVar[str] = "/v1/embeddings"
    provider_path: ClassVar[str] = "/embeddings"
    content_field: ClassVar[str] = "input"
    # ("stream" stays a parameter, so that parse refuses it by name.)
    own: ClassVar[tuple[str, ...]] = ("model", "input")

    def front_door_call(self, body: dict[str, Any]) -> tuple[str, str, bool]:
        content, parameters, _ = super().front_door_call(body)
        return content, parameters, False

    def parse(self, call: ModelCall) -> ParsedRequest:
        if call.stream:
            raise ModelRequestError("embeddings cannot be streamed")
        value = json_value(call.messages_json or "null", "input")
        parameters = parameters_object(call.parameters_json, _OWN, "is not for embeddings")
        texts = _texts(value)
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

    def stream_end(self) -> bytes:
        return b""


EMBEDDINGS = EmbeddingsApi()
