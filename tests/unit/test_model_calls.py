"""Model requests: strict parsing, what policy sees, and what the provider gets."""

from __future__ import annotations

import json

import pytest

from sidecar.config import ModelSettings
from sidecar.model_calls import (
    ModelCall,
    ModelRequestError,
    estimate_usage,
    parse_model_request,
    policy_arguments,
    provider_body,
    usage_from,
)

USER = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("messages", "parameters", "words"),
    [
        ("[]", "{}", "non-empty"),
        ('{"role": "user"}', "{}", "non-empty"),
        ('[{"content": "x"}]', "{}", "with a role"),
        ('[{"role": "wizard"}]', "{}", "with a role"),
        ("not json", "{}", "not valid JSON"),
        (json.dumps(USER), '{"a": 1, "a": 2}', "repeats the key"),
        (json.dumps(USER), '{"t": NaN}', "NaN"),
        (json.dumps(USER), "[]", "JSON object"),
        (json.dumps(USER), '{"stream": true}', "set by the sidecar"),
        (json.dumps(USER), '{"model": "other"}', "set by the sidecar"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(messages, parameters, words):
    with pytest.raises(ModelRequestError, match=words):
        parse_model_request(ModelCall("m", messages, parameters))


def test_policy_sees_a_summary_and_tool_names_not_the_prompt():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    summary = policy_arguments(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        {"temperature": 0.1, "tools": tools},
    )
    assert summary == {
        "parameters": {"temperature": 0.1, "tools": ["lookup"]},
        "messages": {"count": 2, "chars": 10, "roles": ["system", "user"]},
    }


@pytest.mark.parametrize(
    ("parameters", "cap", "expected"),
    [
        ({}, 512, {"max_tokens": 512}),
        ({"max_tokens": 4000}, 512, {"max_tokens": 512}),
        ({"max_tokens": 50}, 512, {"max_tokens": 50}),
        ({"max_completion_tokens": 9000}, 512, {"max_completion_tokens": 512}),
        ({"max_tokens": 4000}, None, {"max_tokens": 4000}),
    ],
)
def test_max_tokens_is_capped_by_the_obligation(parameters, cap, expected):
    body = provider_body(
        "alias",
        ModelSettings(provider="p", model="real"),
        USER,
        parameters,
        max_tokens=cap,
        stream=False,
    )
    assert body == {"model": "real", "messages": USER, **expected}


def test_a_stream_asks_for_usage():
    body = provider_body(
        "alias", ModelSettings(provider="p"), USER, {}, max_tokens=None, stream=True
    )
    assert body["model"] == "alias"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_usage_is_read_or_estimated():
    assert usage_from({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).total_tokens == 7
    assert usage_from({"usage": "lots"}) is None
    assert usage_from({}) is None
    estimate = estimate_usage([{"role": "user", "content": "x" * 40}], "y" * 8)
    # UTF-8 bytes (issue 33 item 5: an upper bound for any script), 4 of framing a message
    assert (estimate.prompt_tokens, estimate.completion_tokens, estimate.estimated) == (44, 8, True)
