"""The model API modules' own parts (issue 33): request parsing, provider bodies, stream
redaction across event boundaries, error shapes. The e2e behaviour is in
tests/e2e/test_model_apis.py."""

from __future__ import annotations

import json

import grpc
import pytest

from examples.demo import openai_wire
from sidecar.calls.common import CallResult
from sidecar.frontdoor import api_error
from sidecar.model_apis import APIS
from sidecar.model_apis.base import RedactorFactory
from sidecar.model_apis.embeddings import EMBEDDINGS
from sidecar.model_apis.responses import RESPONSES
from sidecar.model_calls import ModelCall, ModelRequestError
from sidecar.relay.errors import UpstreamStreamInterrupted
from sidecar.relay.models import SseEvent
from sidecar.relay.scrub import Scrubber

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
KEY = "sk-provider-0123456789abcdefghijklmnop"


def responses_call(value, **parameters) -> ModelCall:
    return ModelCall(
        model="m", messages_json=json.dumps(value), parameters_json=json.dumps(parameters)
    )


def test_every_api_is_registered_under_its_name_and_route():
    assert {"chat", "responses", "embeddings"} <= set(APIS)
    routes = {api.route for api in APIS.values()}
    assert {"/v1/chat/completions", "/v1/responses", "/v1/embeddings"} <= routes


@pytest.mark.parametrize(
    ("value", "parameters", "words"),
    [
        (None, {}, "input must be a string or a non-empty array"),
        ([], {}, "non-empty array"),
        ([1], {}, "input[0] must be an object"),
        ([{"role": "robot", "content": "x"}], {}, "needs a role"),
        ([{"type": 5}], {}, "type must be a string"),
        ("x", {"instructions": 3}, "instructions must be a string"),
        ("x", {"max_output_tokens": 1.5}, "max_output_tokens must be a positive integer"),
        ("x", {"max_output_tokens": True}, "max_output_tokens must be a positive integer"),
        ("x", {"previous_response_id": 7}, "previous_response_id must be a string"),
        ("x", {"input": "again"}, "'input' is set by the sidecar"),
    ],
)
def test_item1_malformed_responses_requests_are_refused(value, parameters, words):
    with pytest.raises(ModelRequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        RESPONSES.parse(responses_call(value, **parameters))


def test_item1_instructions_are_content_and_the_cap_is_the_obligation():
    parsed = RESPONSES.parse(
        responses_call("hi", instructions="be brief", max_output_tokens=9000, store=False)
    )
    assert parsed.content == {"input": "hi", "instructions": "be brief"}
    assert parsed.parameters == {"max_output_tokens": 9000, "store": False}
    body = RESPONSES.provider_body(
        "gpt-4o-mini", parsed.content, parsed.parameters, max_tokens=512, stream=True
    )
    assert body["max_output_tokens"] == 512 and body["stream"] is True
    assert body["instructions"] == "be brief" and body["model"] == "gpt-4o-mini"
    # no cap from agent or policy: a budget's cap is sent
    bare = RESPONSES.provider_body("m", {"input": "x"}, {}, max_tokens=None, stream=False)
    assert "max_output_tokens" not in bare
    budgeted = RESPONSES.provider_body(
        "m", {"input": "x"}, {}, max_tokens=None, stream=False, default_max_tokens=1024
    )
    assert budgeted["max_output_tokens"] == 1024


def test_item1_the_reservation_counts_every_text_and_the_cap():
    content = {"input": [{"role": "user", "content": "日本語"}], "instructions": "ab"}
    reserved = RESPONSES.reservation(content, {"max_output_tokens": 100})
    assert reserved >= len("日本語".encode()) + 2 + 100  # bytes, not characters


def _feed(stream, events) -> list[dict]:
    out = []
    for event in events:
        out += stream.feed(SseEvent(event["type"], json.dumps(event)))
    return out


def test_item1_a_secret_split_over_deltas_is_redacted_and_done_events_repeat_it_redacted():
    reply = f"the key is {SECRET} ok"
    events = openai_wire.response_events({"model": "m", "input": "x"}, reply, piece_chars=3)
    stream = RESPONSES.stream(
        "alias", RedactorFactory(("secret", "private_key"), Scrubber()), Scrubber()
    )
    out = _feed(stream, events)
    assert stream.done
    deltas = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert deltas == "the key is [REDACTED:secret] ok"
    assert "ABCDEF" not in json.dumps(out)
    done = next(e for e in out if e["type"] == "response.output_text.done")
    assert done["text"] == deltas
    # the flushed rest went out before its done event, and numbering stays gapless
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    last_delta = max(i for i, e in enumerate(out) if e["type"] == "response.output_text.delta")
    assert last_delta < out.index(done)
    assert out[-1]["response"]["model"] == "alias"
    assert stream.usage is not None and stream.usage.total_tokens == 6  # 1 in, 5 out


def test_item1_a_stream_ending_without_done_events_releases_the_rest_before_completed():
    events = openai_wire.response_events({"model": "m", "input": "x"}, "abc def")
    events = [e for e in events if not e["type"].endswith(".done") or "output_item" in e["type"]]
    stream = RESPONSES.stream("a", RedactorFactory(("secret",), Scrubber()), Scrubber())
    out = _feed(stream, events)
    assert out[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert text == "abc def"


def test_item1_the_provider_key_is_scrubbed_from_every_event():
    events = openai_wire.response_events({"model": "m", "input": "x"}, f"k {KEY}", piece_chars=5)
    scrubber = Scrubber([KEY])
    out = _feed(RESPONSES.stream("a", RedactorFactory((), scrubber), scrubber), events)
    assert KEY not in json.dumps(out) and KEY[:12] not in json.dumps(out)


@pytest.mark.parametrize("kind", ["error", "response.failed"])
def test_item6_a_provider_error_event_breaks_the_stream(kind):
    stream = RESPONSES.stream("a", RedactorFactory((), Scrubber()), Scrubber())
    with pytest.raises(UpstreamStreamInterrupted):
        stream.feed(SseEvent(kind, json.dumps({"type": kind, "message": "boom"})))
    assert not stream.done


def test_item1_logprobs_never_reach_the_agent():
    answer = openai_wire.response_object({"model": "m"}, f"x {SECRET}")
    answer["output"][0]["content"][0]["logprobs"] = [{"token": SECRET[:8], "logprob": -0.1}]
    out = RESPONSES.unary(answer, "alias", ("secret",), Scrubber())
    assert out.body["output"][0]["content"][0]["logprobs"] == []
    assert out.text == "x [REDACTED:secret]" and out.classes == ["secret"]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ([1, 2, 3], "unclassifiable_input"),
        ([[1, 2], [3]], "unclassifiable_input"),
        ([], "invalid_arguments"),
        (["a", 1], "invalid_arguments"),
        ({"text": "a"}, "invalid_arguments"),
        (None, "invalid_arguments"),
    ],
)
def test_item2_embeddings_input_that_cannot_be_classified_is_refused(value, code):
    with pytest.raises(ModelRequestError) as refused:
        EMBEDDINGS.parse(ModelCall(model="e", messages_json=json.dumps(value)))
    assert refused.value.code == code


def test_item2_embeddings_reserve_the_input_only_and_cannot_stream():
    parsed = EMBEDDINGS.parse(ModelCall(model="e", messages_json='["ab", "cd"]'))
    assert EMBEDDINGS.reservation(parsed.content, {}) < 100  # no output cap of 1,024
    with pytest.raises(ModelRequestError, match="cannot be streamed"):
        EMBEDDINGS.parse(ModelCall(model="e", messages_json='"x"', stream=True))


def test_item6_error_bodies_carry_code_decision_and_approval_url():
    result = CallResult(
        "01J00000000000000000000000",
        "approval_required",
        grpc.StatusCode.FAILED_PRECONDITION,
        "needs a human",
        approval_id="ap-1",
    )
    result.approval_url = "https://console.example/approvals/ap-1"
    error = api_error(result)
    assert (error.status, error.type) == (409, "approval_required")
    body = RESPONSES.error_body(error)["error"]
    assert body["approval_id"] == "ap-1"
    assert body["approval_url"] == "https://console.example/approvals/ap-1"
    assert body["decision_id"] == "01J00000000000000000000000"
    event = RESPONSES.stream_error(error).decode()
    assert event.startswith("event: error\ndata: ")
    data = json.loads(event.split("data: ", 1)[1])
    # the SDK raises on an event whose data has an "error" object
    assert data["type"] == "error" and data["error"]["code"] == "approval_required"
