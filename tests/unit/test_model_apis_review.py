"""Issue 33 review findings on the generic model path (H1, H4, M1, M4, M5, M6, L1, L2, L4):
the API modules' own parts. The e2e proofs are in tests/e2e/test_model_apis_review.py."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from sidecar.calls.common import CallResult
from sidecar.classify import classify
from sidecar.frontdoor import api_error
from sidecar.model_apis.base import (
    RedactorFactory,
    redact_deep,
    strip_credentials,
    text_parameters,
    with_decoded_json,
)
from sidecar.model_apis.chat import CHAT
from sidecar.model_apis.responses import RESPONSES
from sidecar.model_calls import ModelCall, ModelRequestError, reservation_estimate
from sidecar.relay.models import SseEvent
from sidecar.relay.scrub import Scrubber

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
ESCAPED = '{"k":"\\u0073k-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"}'


def responses_call(value, **parameters) -> ModelCall:
    return ModelCall(
        model="m", messages_json=json.dumps(value), parameters_json=json.dumps(parameters)
    )


def _feed(stream, events) -> list[dict]:
    out = []
    for event in events:
        name = event.get("type", "") if isinstance(event, dict) else ""
        out += stream.feed(SseEvent(name, json.dumps(event) if event != "[DONE]" else event))
    return out


# --- H1: every text-bearing parameter is classified (allow-list of non-text ones) ----------


@pytest.mark.parametrize(
    "parameters",
    [
        {"tools": [{"type": "function", "name": "f", "description": SECRET}]},
        {"tools": [{"type": "function", "name": "f", "parameters": {"description": SECRET}}]},
        {"prompt": {"id": "p", "variables": {"k": SECRET}}},
        {"text": {"format": {"type": "json_schema", "schema": {"description": SECRET}}}},
        {"metadata": {"k": SECRET}},
        {"some_future_field": [{"deep": SECRET}]},
    ],
    ids=["tool_description", "tool_schema", "prompt_variables", "text_schema", "metadata", "new"],
)
def test_review_h1_text_parameters_are_classified(parameters):
    parsed = RESPONSES.parse(responses_call("hi", **parameters))
    checked = [RESPONSES.classified(parsed.content), text_parameters(parsed.parameters)]
    assert "secret" in classify(with_decoded_json(checked))


def test_review_h1_numbers_and_flags_are_not_text_parameters():
    assert text_parameters({"max_output_tokens": 4111111111111111, "seed": 1, "store": True}) == {}


def test_review_h1_input_file_text_is_classified_and_redacted_encoded_again():
    encoded = base64.b64encode(f"mail a@b.example {SECRET}".encode()).decode()
    data = "data:text/plain;base64," + encoded
    items = [{"role": "user", "content": [{"type": "input_file", "file_data": data}]}]
    parsed = RESPONSES.parse(responses_call(items))
    assert classify(RESPONSES.classified(parsed.content)) == ["email", "secret"]
    sent = RESPONSES.redact(parsed.content, ("email",))
    part = sent["input"][0]["content"][0]
    assert part["file_data"].startswith("data:text/plain;base64,")
    decoded = base64.b64decode(part["file_data"].partition(",")[2]).decode()
    assert decoded == f"mail [REDACTED:email] {SECRET}"


@pytest.mark.parametrize("data", ["data:application/pdf;base64,JVBERi0xLjQK/w==", "%%%not-b64"])
def test_review_h1_a_file_the_sidecar_cannot_read_is_refused(data):
    items = [{"role": "user", "content": [{"type": "input_file", "file_data": data}]}]
    with pytest.raises(ModelRequestError) as refused:
        RESPONSES.parse(responses_call(items))
    assert refused.value.code == "unclassifiable_input"


# --- H4: the larger cap and best_of count ---------------------------------------------------


def test_review_h4_both_caps_reserve_the_larger_and_best_of_multiplies():
    messages = [{"role": "user", "content": "hi"}]
    small = reservation_estimate(messages, {"max_tokens": 1, "n": 8})
    both = reservation_estimate(messages, {"max_tokens": 1, "max_completion_tokens": 512, "n": 8})
    assert both - small == 8 * 511
    best = reservation_estimate(messages, {"max_tokens": 100, "best_of": 5})
    assert best - reservation_estimate(messages, {"max_tokens": 100}) == 4 * 100


@pytest.mark.parametrize("key", ["n", "best_of"])
def test_review_h4_responses_refuse_choice_multipliers(key):
    with pytest.raises(ModelRequestError, match=key):
        RESPONSES.parse(responses_call("hi", **{key: 4}))


# --- M1: background responses ----------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "yes", 1])
def test_review_m1_background_is_refused(value):
    with pytest.raises(ModelRequestError, match="background"):
        RESPONSES.parse(responses_call("hi", background=value))
    RESPONSES.parse(responses_call("hi", background=False))  # (false is the default)


# --- M3 / M6: provider tools and stored-object references reach policy ----------------------


def test_review_m3_m6_policy_sees_provider_tools_and_references():
    items = [
        {"type": "item_reference", "id": "msg_9"},
        {"role": "user", "content": [{"type": "input_file", "file_id": "file-7"}]},
    ]
    tools = [
        {"type": "mcp", "server_label": "x", "server_url": "https://MCP.Example:8443/mcp"},
        {"type": "web_search"},
        {"type": "function", "name": "own"},
    ]
    summary = RESPONSES.parse(
        responses_call(items, tools=tools, previous_response_id="resp_1", conversation={"id": "c"})
    ).summary
    assert summary["provider_tools"] == [
        {"type": "mcp", "target": "mcp.example"},
        {"type": "web_search", "target": ""},
    ]
    assert summary["references"] == {
        "file_ids": ["file-7"],
        "item_references": ["msg_9"],
        "previous_response_id": "resp_1",
        "conversation": "c",
    }


# --- M4: credentials -------------------------------------------------------------------------


def test_review_m4_credentials_are_stripped_at_any_depth():
    value = {
        "tools": [{"type": "mcp", "authorization": "tok-1", "headers": {"X-Key": "tok-2"}}],
        "mcp_servers": [{"Authorization_Token": "tok-3", "url": "https://x"}],
        "metadata": {"api_key": "tok-4", "password": "tok-5", "note": "kept"},
    }
    stripped = json.dumps(strip_credentials(value))
    assert not any(f"tok-{i}" in stripped for i in range(1, 6))
    assert "kept" in stripped and "https://x" in stripped


# --- M5: provider errors ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 429, 500, 503, 529])
def test_review_m5_provider_errors_keep_status_and_message(status):
    body = json.dumps({"error": {"message": "PROVIDER SAYS WHY", "type": "x"}}).encode()
    result = CallResult(
        "d1",
        "upstream_error",
        grpc.StatusCode.UNAVAILABLE,
        "the upstream answered HTTP x",
        upstream_status=status,
        upstream_body=body,
    )
    error = api_error(result)
    assert error.status == status
    assert "PROVIDER SAYS WHY" in error.message
    assert error.upstream == json.loads(body)


# --- L1: Responses stream parts keyed by output/content index -------------------------------


def test_review_l1_a_changing_item_id_does_not_split_a_secret():
    base = {"output_index": 0, "content_index": 0}
    events = [
        {"type": "response.output_text.delta", "item_id": "m1", **base, "delta": SECRET[:16]},
        {"type": "response.output_text.delta", "item_id": "m1x", **base, "delta": SECRET[16:]},
        {"type": "response.completed", "response": {"output": [], "usage": None}},
    ]
    stream = RESPONSES.stream("a", RedactorFactory(("secret",), Scrubber()), Scrubber())
    out = _feed(stream, events)
    text = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert text == "[REDACTED:secret]"


# --- L2: one redactor per chat choice --------------------------------------------------------


def _chunk(index: int, text: str, finish: str | None = None) -> dict:
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]}


def test_review_l2_each_choice_has_its_own_redactor():
    stream = CHAT.stream("a", RedactorFactory(("secret",), Scrubber()), Scrubber())
    events = [
        _chunk(0, "key " + SECRET[:14]),
        _chunk(1, "A"),
        _chunk(0, SECRET[14:]),
        _chunk(1, "B"),
        _chunk(0, "", "stop"),
        _chunk(1, "", "stop"),
        "[DONE]",
    ]
    got = {0: "", 1: ""}
    for event in events:
        data = event if event == "[DONE]" else json.dumps(event)
        for chunk in stream.feed(SseEvent("", data)):
            for choice in chunk["choices"]:
                got[choice["index"]] += choice["delta"].get("content") or ""
    assert got == {0: "key [REDACTED:secret]", 1: "AB"}


# --- L4: \u-escaped secrets inside JSON strings ---------------------------------------------


def test_review_l4_escaped_secrets_in_arguments_are_found_and_redacted():
    output = [{"type": "function_call", "name": "f", "arguments": ESCAPED}]
    assert classify(output) == []  # what the old check saw
    assert classify(with_decoded_json(output)) == ["secret"]
    redacted = redact_deep(output, ("secret",))
    assert json.loads(redacted[0]["arguments"]) == {"k": "[REDACTED:secret]"}
    answer = {"output": output, "usage": {"input_tokens": 1, "output_tokens": 1}}
    unary = RESPONSES.unary(answer, "a", ("secret",), Scrubber())
    assert "ABCDEFGH" not in json.dumps(unary.body) and unary.classes == ["secret"]
