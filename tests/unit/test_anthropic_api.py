"""The Anthropic Messages API's pure parts: parsing, classification, redaction, the
max_tokens obligation, reservations, answers, streams and errors (issue 33 item 3)."""

from __future__ import annotations

import json

import pytest

from sidecar.model_apis.anthropic import COUNT_TOKENS, MESSAGES
from sidecar.model_apis.anthropic_answer import (
    answer_text,
    error_body,
    redact_answer,
    sse,
    usage_from_answer,
)
from sidecar.model_apis.anthropic_request import (
    MessagesRequestError,
    parse_request,
    provider_body,
    redact_request,
)
from sidecar.model_apis.base import ApiError, SseEvent
from sidecar.model_calls import ModelCall, ModelRequestError
from sidecar.relay.errors import UpstreamBadResponse, UpstreamStreamInterrupted
from sidecar.relay.scrub import Scrubber
from sidecar.token_estimate import PER_PART_OVERHEAD

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
IMAGE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0K+4155550123/jane@x"}


def body(**extra):
    return {
        "model": "claude-small",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hello there"}],
        **extra,
    }


RICH = body(
    system=[{"type": "text", "text": "you help jane@example.com"}],
    tools=[{"name": "lookup_order", "input_schema": {"type": "object"}}],
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at this"},
                {"type": "image", "source": IMAGE},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "lookup_order", "input": {"q": SECRET}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": f"found {SECRET}"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "mail bob@example.com"}],
                },
            ],
        },
    ],
)


def test_item3_every_text_is_classified_system_tool_use_and_tool_result():
    request = parse_request(RICH)
    texts = request.texts()
    assert "you help jane@example.com" in texts and f"found {SECRET}" in texts
    assert SECRET in texts  # the tool_use input
    assert "mail bob@example.com" in texts
    assert IMAGE["data"] not in texts  # image data is not text
    assert request.data_classes() == ["email", "secret"]
    # The system prompt as a plain string counts the same.
    assert parse_request(body(system=f"key {SECRET}")).data_classes() == ["secret"]


def test_item3_redaction_covers_every_text_and_leaves_image_data_byte_exact():
    sent = redact_request(parse_request(RICH), ["email", "secret", "phone"])
    dumped = json.dumps([sent.system, sent.messages])
    assert SECRET not in dumped and "jane@example.com" not in dumped
    assert "bob@example.com" not in dumped
    assert sent.system[0]["text"] == "you help [REDACTED:email]"
    assert sent.messages[1]["content"][0]["input"] == {"q": "[REDACTED:secret]"}
    assert sent.messages[2]["content"][0]["content"] == "found [REDACTED:secret]"
    assert sent.messages[0]["content"][1]["source"] == IMAGE  # digits, @: untouched
    # The same through the API object (what the model path calls).
    content = MESSAGES.parse(call(RICH)).content
    redacted = MESSAGES.redact(content, ("email", "secret", "phone"))
    assert redacted["messages"][0]["content"][1]["source"] == IMAGE
    assert SECRET not in json.dumps(redacted)


def call(b, *, stream=False):
    content, parameters, streamed = MESSAGES.front_door_call(dict(b))
    return ModelCall(
        model=b["model"],
        messages_json=content,
        parameters_json=parameters,
        stream=stream or streamed,
    )


def test_item3_policy_sees_a_summary_with_tools_by_name_and_block_counts():
    parsed = MESSAGES.parse(call(RICH))
    assert parsed.summary["parameters"] == {"max_tokens": 1000, "tools": ["lookup_order"]}
    assert parsed.summary["messages"]["roles"] == ["assistant", "system", "user"]
    assert parsed.summary["messages"]["count"] == 3
    assert parsed.summary["messages"]["blocks"] == {
        "image": 1,
        "text": 1,
        "tool_result": 2,
        "tool_use": 1,
    }
    assert "count_tokens" not in parsed.summary
    assert COUNT_TOKENS.parse(call({k: v for k, v in RICH.items() if k != "max_tokens"})).summary[
        "count_tokens"
    ]


def test_item3_max_tokens_is_required_and_capped_by_the_obligation():
    with pytest.raises(MessagesRequestError, match="max_tokens is required"):
        parse_request({k: v for k, v in body().items() if k != "max_tokens"})
    for bad in (0, -1, True, "100", 1.5, None):
        with pytest.raises(MessagesRequestError):
            parse_request(body(max_tokens=bad))
    request = parse_request(body(max_tokens=4000))
    assert provider_body(request, "claude-3-haiku", max_tokens=512)["max_tokens"] == 512
    assert provider_body(request, "claude-3-haiku", max_tokens=None)["max_tokens"] == 4000
    small = provider_body(parse_request(body(max_tokens=50)), "m", max_tokens=512)
    assert small["max_tokens"] == 50  # below the cap: kept
    sent = MESSAGES.provider_body(
        "claude-3-haiku",
        {"messages": request.messages, "system": "be brief"},
        {"max_tokens": 4000, "temperature": 0.2},
        max_tokens=512,
        stream=True,
    )
    assert sent == {
        "model": "claude-3-haiku",
        "system": "be brief",
        "messages": request.messages,
        "max_tokens": 512,
        "temperature": 0.2,
        "stream": True,
    }


def test_item3_the_reservation_is_every_text_plus_max_tokens_for_one_choice():
    request = parse_request(body(system="sys", max_tokens=100))
    texts = ["sys", "hello there"]
    expected = sum(len(t.encode()) for t in texts) + PER_PART_OVERHEAD * len(texts) + 100
    assert request.reservation(100) == expected
    content = MESSAGES.parse(call(body(system="sys", max_tokens=100))).content
    assert MESSAGES.reservation(content, {"max_tokens": 100}) == expected
    # Tool definitions are prompt too; CJK text counts in bytes.
    with_tools = parse_request(body(tools=[{"name": "t", "description": "x" * 300}]))
    assert with_tools.reservation(100) > request.reservation(100) + 300
    cjk = parse_request(body(messages=[{"role": "user", "content": "你好" * 100}]))
    assert cjk.reservation(1) >= 600
    assert COUNT_TOKENS.reservation(content, {}) == 0  # count_tokens is never charged


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (body(model=""), "model is required"),
        (body(messages=[]), "non-empty"),
        (body(messages=[{"role": "system", "content": "x"}]), "role user or assistant"),
        (body(messages=[{"role": "user", "content": 5}]), "string or content blocks"),
        (body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "not supported"),
        (body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), "string"),
        (body(messages=[{"role": "user", "content": ["plain"]}]), "content block"),
        (body(system=7), "system must be"),
        (body(system=[{"type": "image", "source": IMAGE}]), "text block"),
        (body(stream="yes"), "stream must be a boolean"),
        (body(tools=[{"description": "nameless"}]), "each with a name"),
        (
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": 3}],
                    }
                ]
            ),
            "string or content blocks",
        ),
    ],
)
def test_item3_malformed_requests_are_refused_clearly(bad, match):
    with pytest.raises(MessagesRequestError, match=match):
        parse_request(bad)


def test_item3_gateway_parse_refuses_bad_json_and_sidecar_owned_parameters():
    with pytest.raises(ModelRequestError):
        MESSAGES.parse(ModelCall(model="m", messages_json='{"messages": [1', parameters_json="{}"))
    with pytest.raises(ModelRequestError, match="stream"):
        MESSAGES.parse(
            ModelCall(
                model="m",
                messages_json=json.dumps(body()["messages"]),
                parameters_json='{"max_tokens": 5, "stream": true}',
            )
        )
    with pytest.raises(ModelRequestError, match="system, messages"):
        MESSAGES.parse(ModelCall(model="m", messages_json='{"prompt": "x"}'))
    # gRPC callers may send the bare messages array.
    parsed = MESSAGES.parse(
        ModelCall(
            model="m",
            messages_json=json.dumps(body()["messages"]),
            parameters_json='{"max_tokens": 5}',
        )
    )
    assert parsed.content == {"messages": body()["messages"]}
    with pytest.raises(ModelRequestError, match="does not take"):
        COUNT_TOKENS.parse(call(body()))  # count_tokens takes no max_tokens


ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-haiku-20240307",
    "content": [
        {"type": "text", "text": f"the key is {SECRET} ok"},
        {"type": "tool_use", "id": "t", "name": "send", "input": {"to": SECRET}},
    ],
    "stop_reason": "tool_use",
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 7,
    },
}


def test_item3_a_unary_answer_is_redacted_measured_and_carries_the_alias():
    assert usage_from_answer(ANSWER).prompt_tokens == 20  # cache writes and reads count
    assert usage_from_answer(ANSWER).total_tokens == 25
    out = redact_answer(ANSWER, ["secret"], "claude-small")
    assert out["model"] == "claude-small"
    assert answer_text(out) == "the key is [REDACTED:secret] ok"
    assert out["content"][1]["input"] == {"to": "[REDACTED:secret]"}
    assert out["usage"] == ANSWER["usage"]
    answer = MESSAGES.unary(dict(ANSWER), "claude-small", ("secret",), Scrubber())
    assert answer.classes == ["secret"] and SECRET not in json.dumps(answer.body)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (20, 5)
    with pytest.raises(UpstreamBadResponse):
        MESSAGES.unary({"choices": []}, "a", (), Scrubber())


def test_item3_a_provider_key_echoed_in_an_answer_is_scrubbed():
    key = "provider-key-0123456789abcdef"
    echoed = ANSWER | {"content": [{"type": "text", "text": f"x-api-key={key}"}]}
    scrubber = Scrubber([key])
    answer = MESSAGES.unary(echoed, "a", (), scrubber)
    assert key not in json.dumps(answer.body) and scrubber.count == 1


def events(pieces, *, json_pieces=()):
    out = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-haiku",
                "content": [],
                "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 4},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    out += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    out.append({"type": "content_block_stop", "index": 0})
    if json_pieces:
        out.append(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "t", "name": "send", "input": {}},
            }
        )
        out += [
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": p},
            }
            for p in json_pieces
        ]
        out.append({"type": "content_block_stop", "index": 1})
    out += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]
    return out


def run_stream(raw_events, classes=("secret",), key=""):
    scrubber = Scrubber([key] if key else [])
    handler = MESSAGES.stream("claude-small", lambda: scrubber.stream(classes), scrubber)
    sent = []
    for event in raw_events:
        sent += handler.feed(SseEvent(event["type"], json.dumps(event)))
    return handler, sent


def text_of(sent, kind="text_delta", key="text"):
    return "".join(
        e["delta"][key]
        for e in sent
        if e["type"] == "content_block_delta" and e["delta"]["type"] == kind
    )


def test_item3_a_secret_split_across_text_deltas_is_redacted_for_the_agent():
    half = len(SECRET) // 2
    handler, sent = run_stream(events(["the key is ", SECRET[:half], SECRET[half:], " ok"]))
    assert text_of(sent) == "the key is [REDACTED:secret] ok"
    assert SECRET[:half] not in json.dumps(sent) and SECRET[half:] not in json.dumps(sent)
    assert handler.text == "the key is [REDACTED:secret] ok"
    assert handler.raw == f"the key is {SECRET} ok"
    # The held-back text goes out before its block's stop, in order.
    kinds = [e["type"] for e in sent]
    assert kinds.index("content_block_stop") > max(
        i for i, k in enumerate(kinds) if k == "content_block_delta"
    )
    assert sent[0]["message"]["model"] == "claude-small"
    assert handler.done
    # Usage: input from message_start (cache reads included), output from message_delta.
    assert (handler.usage.prompt_tokens, handler.usage.completion_tokens) == (16, 30)


def test_item3_a_secret_split_across_tool_input_json_deltas_is_redacted_and_stays_json():
    doc = json.dumps({"to": SECRET})
    cut = doc.index(SECRET) + 10
    _, sent = run_stream(events(["ok"], json_pieces=[doc[:cut], doc[cut:]]))
    sent_json = text_of(sent, "input_json_delta", "partial_json")
    assert json.loads(sent_json) == {"to": "[REDACTED:secret]"}


def test_item3_a_broken_stream_is_not_done_and_flush_releases_what_was_held():
    handler, sent = run_stream(events(["held back text"])[:4])  # cut after the first delta
    assert not handler.done
    assert text_of(sent) == ""  # all of it is still held (it could grow into a match)
    rest = handler.flush()
    assert text_of(rest) == "held back text"
    with pytest.raises(UpstreamStreamInterrupted):
        handler.feed(SseEvent("error", '{"type":"error","error":{"type":"overloaded_error"}}'))
    with pytest.raises(UpstreamBadResponse):
        handler.feed(SseEvent("", "not json"))


def test_item3_a_key_in_any_streamed_event_is_scrubbed():
    key = "provider-key-0123456789abcdef"
    raw = events([f"x-api-key={key}"])
    raw[0]["message"]["id"] = key  # in a field that is not text
    _, sent = run_stream(raw, classes=(), key=key)
    assert key not in json.dumps(sent)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_item6_errors_are_anthropic_shaped_with_the_code_and_decision_inside(status, kind):
    out = error_body(status, "policy_deny", "no", decision_id="01J", reasons=["r"])
    assert out == {
        "type": "error",
        "error": {
            "type": kind,
            "message": "no",
            "code": "policy_deny",
            "decision_id": "01J",
            "reasons": ["r"],
        },
        "request_id": "01J",
    }


def test_item6_an_upstream_anthropic_error_keeps_its_type_and_a_step_up_its_approval():
    upstream = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    out = error_body(529, "upstream_error", "x", upstream_body=upstream)
    assert (out["error"]["type"], out["error"]["message"]) == ("overloaded_error", "Overloaded")
    error = ApiError(
        409,
        "approval_required",
        "approval_required",
        "a human must approve",
        {"decision_id": "01J", "reasons": [], "approval_id": "ap1", "approval_url": "https://a/x"},
    )
    shaped = MESSAGES.error_body(error)
    assert shaped["error"]["approval_id"] == "ap1"
    assert shaped["error"]["approval_url"] == "https://a/x"
    assert shaped["error"]["type"] == "approval_required"
    frame = MESSAGES.stream_error(error)
    assert frame.startswith(b"event: error\ndata: ")
    assert json.loads(frame.split(b"data: ", 1)[1]) == shaped
    assert sse({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_item3_count_tokens_is_decided_but_never_charged():
    parsed = COUNT_TOKENS.parse(
        call({k: v for k, v in body(system="s").items() if k != "max_tokens"})
    )
    sent = COUNT_TOKENS.provider_body(
        "claude-3", parsed.content, parsed.parameters, max_tokens=512, stream=False
    )
    assert "max_tokens" not in sent and "stream" not in sent
    answer = COUNT_TOKENS.unary({"input_tokens": 12}, "a", (), Scrubber())
    assert answer.body == {"input_tokens": 12} and answer.usage.total_tokens == 0
    assert COUNT_TOKENS.estimate(parsed.content, "").total_tokens == 0
    with pytest.raises(UpstreamBadResponse):
        COUNT_TOKENS.unary({"input_tokens": "12"}, "a", (), Scrubber())


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "openai", "anthropic_beta": ("x",)},  # only for the anthropic format
        {"type": "anthropic", "anthropic_beta": ("a,b",)},  # one feature per entry
        {"type": "anthropic", "anthropic_beta": ("a\r\nx-api-key: k",)},
        {"type": "anthropic", "anthropic_version": "2023-06-01\r\nx: y"},
        {"type": "anthropic", "headers": {"X-Api-Key": "k"}},  # the key goes in key_file
    ],
)
def test_item3_provider_settings_refuse_header_injection_and_misplaced_fields(fields):
    from sidecar.relay.settings import ProviderSettings

    with pytest.raises(ValueError):
        ProviderSettings(base_url="https://api.anthropic.com/v1", **fields)
    ok = ProviderSettings(
        base_url="https://api.anthropic.com/v1", type="anthropic", anthropic_beta=("a-1", "b-2")
    )
    assert ok.auth_scheme == "x-api-key"


def test_item3_thinking_text_is_classified_redacted_in_requests_and_answers():
    thinking = {"type": "thinking", "thinking": f"the key {SECRET}", "signature": "sig"}
    request = parse_request(body(messages=[{"role": "assistant", "content": [thinking]}]))
    assert request.data_classes() == ["secret"]
    sent = redact_request(request, ["secret"])
    assert sent.messages[0]["content"][0] == thinking | {"thinking": "the key [REDACTED:secret]"}
    out = redact_answer(ANSWER | {"content": [thinking]}, ["secret"], "a")
    assert out["content"][0]["thinking"] == "the key [REDACTED:secret]"
    assert out["content"][0]["signature"] == "sig"


def test_item3_text_held_in_a_block_the_provider_never_stopped_goes_out_before_message_delta():
    raw = [e for e in events(["held ", "text"]) if e["type"] != "content_block_stop"]
    handler, sent = run_stream(raw)
    kinds = [e["type"] for e in sent]
    assert text_of(sent) == "held text"
    assert kinds.index("message_delta") > max(
        i for i, k in enumerate(kinds) if k == "content_block_delta"
    )
    assert handler.flush() == []


# --- review of issue 33 (R33): H2, H3, M2, M3, M4, L3, L5 ---------------------------------

MCP_TOKEN = "mcp-token-0f9e8d7c6b5a49382716"


def _with(where: str) -> dict:
    """A request with SECRET in one text-bearing field the first cut of the sidecar missed."""
    user = lambda content: [{"role": "user", "content": content}]  # noqa: E731
    doc = {
        "type": "document",
        "source": {"type": "content", "content": [{"type": "text", "text": f"key {SECRET}"}]},
    }
    cases = {
        "document_content": {"messages": user([doc, {"type": "text", "text": "summarise"}])},
        "document_content_string": {
            "messages": user(
                [{"type": "document", "source": {"type": "content", "content": SECRET}}]
            )
        },
        "citations": {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "text",
                            "text": "see",
                            "citations": [
                                {"type": "char_location", "cited_text": SECRET, "document_index": 0}
                            ],
                        }
                    ],
                },
                {"role": "user", "content": "go on"},
            ]
        },
        "tool_description": {
            "tools": [
                {"name": "f", "description": f"key {SECRET}", "input_schema": {"type": "object"}}
            ]
        },
        "tool_input_schema": {
            "tools": [
                {
                    "name": "f",
                    "input_schema": {
                        "type": "object",
                        "properties": {"q": {"description": SECRET}},
                    },
                }
            ]
        },
        "mcp_server_url": {
            "mcp_servers": [
                {"type": "url", "name": "x", "url": f"https://a.example/mcp?k={SECRET}"}
            ]
        },
        "mcp_server_name": {
            "mcp_servers": [{"type": "url", "url": "https://a.example/", "name": SECRET}]
        },
        "mcp_tool_configuration": {
            "mcp_servers": [
                {
                    "type": "url",
                    "url": "https://a.example/",
                    "name": "x",
                    "tool_configuration": {"allowed_tools": [SECRET]},
                }
            ]
        },
        "extra_block_key": {"messages": user([{"type": "text", "text": "hi", "x": SECRET}])},
        "extra_message_key": {"messages": [{"role": "user", "content": "hi", "note": SECRET}]},
        "tool_result_document": {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [doc]}],
                },
            ]
        },
        "image_url": {
            "messages": user(
                [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": f"https://a.example/p.png?k={SECRET}"},
                    }
                ]
            )
        },
        "document_url": {
            "messages": user(
                [
                    {
                        "type": "document",
                        "source": {"type": "url", "url": f"https://a.example/d.pdf?k={SECRET}"},
                    }
                ]
            )
        },
        "metadata": {"metadata": {"user_id": SECRET}},
        "container": {"container": SECRET},
        "stop_sequences": {"stop_sequences": [SECRET]},
        "unknown_parameter": {"future_field": {"nested": SECRET}},
        "tool_choice": {"tool_choice": {"type": "tool", "name": SECRET}},
        "search_result": {
            "messages": user(
                [
                    {
                        "type": "search_result",
                        "source": "s",
                        "title": "t",
                        "content": [{"type": "text", "text": SECRET}],
                    }
                ]
            )
        },
    }
    return body(**cases[where])


WHERE = [
    "document_content",
    "document_content_string",
    "citations",
    "tool_description",
    "tool_input_schema",
    "mcp_server_url",
    "mcp_server_name",
    "mcp_tool_configuration",
    "extra_block_key",
    "extra_message_key",
    "tool_result_document",
    "image_url",
    "document_url",
    "metadata",
    "container",
    "stop_sequences",
    "unknown_parameter",
    "tool_choice",
    "search_result",
]


@pytest.mark.parametrize("where", WHERE)
def test_review_h2_every_text_bearing_field_is_classified_and_redacted(where):
    from sidecar.classify import classify

    parsed = MESSAGES.parse(call(_with(where)))
    assert "secret" in classify(MESSAGES.classified(parsed.content))
    sent = MESSAGES.redact(parsed.content, ("secret",))
    out = MESSAGES.provider_body("m", sent, parsed.parameters, max_tokens=None, stream=False)
    assert SECRET not in json.dumps(out)
    assert "[REDACTED:secret]" in json.dumps(out)
    assert SECRET not in json.dumps(parsed.summary)  # policy sees no prompt text


def test_review_h2_opaque_values_stay_byte_exact_and_numbers_stay_parameters():
    from sidecar.classify import classify

    thinking = {"type": "thinking", "thinking": "hm", "signature": "c2lnbmF0dXJl" * 4}
    request = body(
        temperature=0.5,
        mcp_servers=[
            {
                "type": "url",
                "url": "https://m.example/",
                "name": "m",
                "authorization_token": MCP_TOKEN,
            }
        ],
        messages=[
            {"role": "user", "content": [{"type": "image", "source": IMAGE}]},
            {
                "role": "assistant",
                "content": [thinking, {"type": "redacted_thinking", "data": "4155550123"}],
            },
            {"role": "user", "content": "go on"},
        ],
    )
    parsed = MESSAGES.parse(call(request))
    assert parsed.parameters == {"max_tokens": 1000, "temperature": 0.5}
    readable = json.dumps(MESSAGES.classified(parsed.content))
    assert MCP_TOKEN not in readable and IMAGE["data"] not in readable
    assert classify(MESSAGES.classified(parsed.content)) == []
    sent = MESSAGES.redact(parsed.content, ("secret", "email", "phone"))
    out = MESSAGES.provider_body("m", sent, parsed.parameters, max_tokens=None, stream=False)
    assert out["messages"][0]["content"][0]["source"] == IMAGE
    assert out["messages"][1]["content"] == request["messages"][1]["content"]
    assert out["mcp_servers"][0]["authorization_token"] == MCP_TOKEN  # for the MCP server only


def test_review_h2_unknown_block_types_and_malformed_new_fields_are_refused():
    for bad, match in [
        ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, "video"),
        ({"mcp_servers": [{"name": "no url"}]}, "mcp_servers"),
        ({"mcp_servers": "https://x"}, "mcp_servers"),
        ({"temperature": "hot"}, "temperature"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "content", "content": [{"type": "tool_use"}]},
                            }
                        ],
                    }
                ]
            },
            "tool_use",
        ),
    ]:
        with pytest.raises(ModelRequestError, match=match):
            MESSAGES.parse(call(body(**bad)))


def test_review_m3_policy_sees_each_provider_side_tool_with_its_type_and_host():
    request = body(
        tools=[
            {"name": "lookup", "input_schema": {"type": "object"}},
            {"type": "web_fetch_20250910", "name": "web_fetch"},
            {"type": "web_search_20250305", "name": "web_search", "allowed_domains": ["a.b"]},
        ],
        mcp_servers=[
            {
                "type": "url",
                "url": "https://MCP.Attacker.example:8443/mcp",
                "name": "x",
                "authorization_token": MCP_TOKEN,
            }
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://img.example/p.png"},
                    },
                    {"type": "text", "text": "describe"},
                ],
            }
        ],
    )
    summary = MESSAGES.parse(call(request)).summary
    assert summary["provider_tools"] == [
        {"type": "mcp", "target": "mcp.attacker.example"},
        {"type": "url_source", "target": "img.example"},
        {"type": "web_fetch", "target": ""},
        {"type": "web_search", "target": ""},
    ]
    assert summary["parameters"]["other"] == ["mcp_servers"]
    assert MESSAGES.parse(call(body())).summary["provider_tools"] == []


def test_review_m4_an_mcp_authorization_token_never_reaches_policy_input():
    request = body(
        mcp_servers=[
            {
                "type": "url",
                "url": "https://m.example/",
                "name": "x",
                "authorization_token": MCP_TOKEN,
            }
        ]
    )
    parsed = MESSAGES.parse(call(request))
    assert MCP_TOKEN not in json.dumps(parsed.summary)
    assert MCP_TOKEN in json.dumps(parsed.content)  # (the provider needs it)


@pytest.mark.parametrize(
    "block",
    [
        {
            "type": "text",
            "text": "ok",
            "citations": [
                {
                    "type": "web_search_result_location",
                    "cited_text": SECRET,
                    "url": "https://x",
                    "title": "t",
                    "encrypted_index": "e",
                }
            ],
        },
        {
            "type": "server_tool_use",
            "id": "srvtoolu_1",
            "name": "web_search",
            "input": {"query": SECRET},
        },
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": [
                {
                    "type": "web_search_result",
                    "url": "https://x",
                    "title": SECRET,
                    "encrypted_content": "e",
                    "page_age": None,
                }
            ],
        },
        {
            "type": "web_fetch_tool_result",
            "tool_use_id": "srvtoolu_2",
            "content": {
                "type": "web_fetch_result",
                "url": "https://x",
                "content": {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": SECRET},
                },
            },
        },
        {
            "type": "mcp_tool_result",
            "tool_use_id": "mcptoolu_1",
            "is_error": False,
            "content": [{"type": "text", "text": SECRET}],
        },
        {
            "type": "mcp_tool_use",
            "id": "mcptoolu_1",
            "name": "f",
            "server_name": "x",
            "input": {"q": SECRET},
        },
    ],
)
def test_review_h3_a_unary_answer_is_redacted_in_every_block(block):
    answer = {"type": "message", "model": "m", "content": [block], "usage": {}}
    out = MESSAGES.unary(answer, "claude-small", ("secret",), Scrubber([]))
    assert "secret" in out.classes
    assert SECRET not in json.dumps(out.body) and "[REDACTED:secret]" in json.dumps(out.body)
    for opaque in ("encrypted_content", "encrypted_index"):
        if opaque in json.dumps(block):
            assert f'"{opaque}": "e"' in json.dumps(out.body)


def test_review_h3_a_redacted_thinking_block_keeps_its_signature():
    block = {"type": "thinking", "thinking": f"the key {SECRET}", "signature": "sig=="}
    answer = {"type": "message", "model": "m", "content": [block], "usage": {}}
    out = MESSAGES.unary(answer, "claude-small", ("secret",), Scrubber([]))
    assert out.body["content"][0] == {
        "type": "thinking",
        "thinking": "the key [REDACTED:secret]",
        "signature": "sig==",
    }


def _start(message_content=()):
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": list(message_content),
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    }


def _stream_of(*middle):
    end = [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
    return [_start(), *middle, *end]


def _run(events, classes=("secret",)):
    from sidecar.model_apis.base import RedactorFactory

    scrubber = Scrubber([])
    handler = MESSAGES.stream("claude-small", RedactorFactory(classes, scrubber), scrubber)
    sent = []
    for event in events:
        sent += handler.feed(SseEvent(event["type"], json.dumps(event)))
    return handler, sent


def _delta(index, delta):
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _block(index, block):
    return {"type": "content_block_start", "index": index, "content_block": block}


STOP0 = {"type": "content_block_stop", "index": 0}
HALF = len(SECRET) // 2


@pytest.mark.parametrize(
    "events",
    [
        _stream_of(
            _block(0, {"type": "text", "text": "", "citations": []}),
            _delta(0, {"type": "text_delta", "text": "ok"}),
            _delta(
                0,
                {
                    "type": "citations_delta",
                    "citation": {"type": "char_location", "cited_text": SECRET},
                },
            ),
            STOP0,
        ),
        _stream_of(
            _block(0, {"type": "text", "text": f"key {SECRET}"}),
            _delta(0, {"type": "text_delta", "text": " ok"}),
            STOP0,
        ),
        _stream_of(
            _block(0, {"type": "text", "text": f"key {SECRET[:HALF]}"}),
            _delta(0, {"type": "text_delta", "text": SECRET[HALF:]}),
            STOP0,
        ),
        _stream_of(
            _block(0, {"type": "thinking", "thinking": SECRET[:HALF]}),
            _delta(0, {"type": "thinking_delta", "thinking": SECRET[HALF:]}),
            _delta(0, {"type": "signature_delta", "signature": "sig"}),
            STOP0,
        ),
        _stream_of(
            _block(
                0,
                {
                    "type": "server_tool_use",
                    "id": "s",
                    "name": "web_search",
                    "input": {"query": SECRET},
                },
            ),
            STOP0,
        ),
        _stream_of(
            _block(
                0,
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "s",
                    "content": [
                        {
                            "type": "web_search_result",
                            "title": SECRET,
                            "url": "https://x",
                            "encrypted_content": "e",
                        }
                    ],
                },
            ),
            STOP0,
        ),
        _stream_of(
            _block(0, {"type": "tool_use", "id": "t", "name": "f", "input": {"q": SECRET}}), STOP0
        ),
        [_start([{"type": "text", "text": SECRET}]), {"type": "message_stop"}],
    ],
    ids=[
        "citations_delta",
        "block_start_text",
        "split_start_and_delta",
        "thinking_split",
        "server_tool_use",
        "web_search_result",
        "tool_use_start_input",
        "message_start",
    ],
)
def test_review_h3_every_text_in_a_stream_is_redacted(events):
    handler, sent = _run(events)
    assert SECRET not in json.dumps(sent)
    assert SECRET[:HALF] not in json.dumps(sent) and SECRET[HALF:] not in json.dumps(sent)
    assert "[REDACTED:secret]" in json.dumps(sent)
    assert SECRET in handler.raw  # L3: the audit's response classes see it
    if any(e.get("delta", {}).get("type") == "signature_delta" for e in events):
        assert {"type": "signature_delta", "signature": "sig"} in [e.get("delta") for e in sent]


def test_review_l3_m2_thinking_and_tool_json_are_raw_and_delivered_when_a_stream_breaks():
    think, tool_json = "x" * 3000, '{"a":"' + "y" * 3000 + '"}'
    events = [
        _start(),
        _block(0, {"type": "thinking", "thinking": "", "signature": ""}),
        _delta(0, {"type": "thinking_delta", "thinking": think}),
        STOP0,
        _block(1, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        _delta(1, {"type": "input_json_delta", "partial_json": tool_json}),
        {"type": "content_block_stop", "index": 1},
    ]  # then cut: no message_delta, no message_stop
    handler, _ = _run(events, classes=())
    assert not handler.done and handler.text == ""
    assert think in handler.raw and tool_json in handler.raw
    assert len(handler.delivered) >= len(think) + len(tool_json)
    # what the broken stream is charged for at least: every text the agent got
    parsed = MESSAGES.parse(call(body()))
    assert MESSAGES.estimate(parsed.content, handler.delivered).completion_tokens >= 6000


@pytest.mark.parametrize(
    ("asked", "cap", "expected"),
    [
        (8000, 4000, {"type": "enabled", "budget_tokens": 3999}),  # lowered with max_tokens
        (2000, 4000, {"type": "enabled", "budget_tokens": 2000}),  # fits: kept
        (4000, 1025, {"type": "enabled", "budget_tokens": 1024}),  # the floor still fits
        (4000, 512, {"type": "disabled"}),  # no budget >= 1024 fits below 512: thinking off
    ],
)
def test_review_l5_thinking_budget_follows_the_max_tokens_obligation(asked, cap, expected):
    request = parse_request(
        body(max_tokens=16000, thinking={"type": "enabled", "budget_tokens": asked})
    )
    sent = provider_body(request, "m", max_tokens=cap)
    assert sent["max_tokens"] == min(cap, 16000)
    assert sent["thinking"] == expected
    untouched = provider_body(request, "m", max_tokens=None)  # no obligation: as asked
    assert untouched["thinking"] == {"type": "enabled", "budget_tokens": asked}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
    ],
)
def test_review_m5_a_provider_error_keeps_its_type_and_message(status, kind):
    upstream = json.dumps({"type": "error", "error": {"type": kind, "message": "PROVIDER SAYS"}})
    for carried in (upstream.encode(), upstream):
        error = ApiError(
            status,
            "upstream_error",
            "upstream_error",
            "the upstream answered",
            {"decision_id": "01J", "upstream_body": carried},
        )
        out = MESSAGES.error_body(error)
        assert out["error"]["type"] == kind and out["error"]["message"] == "PROVIDER SAYS"
        assert out["error"]["code"] == "upstream_error" and out["request_id"] == "01J"
        assert "upstream_body" not in out["error"]
    garbage = ApiError(
        529,
        "upstream_error",
        "upstream_error",
        "the upstream answered",
        {"upstream_body": b"<html>"},
    )
    assert MESSAGES.error_body(garbage)["error"]["type"] == "overloaded_error"


def test_review_m4_the_credential_key_is_skipped_only_on_an_mcp_server():
    from sidecar.classify import classify

    tool_input = {"type": "url", "url": "https://x/", "authorization_token": SECRET}
    request = body(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": tool_input}],
            },
            {"role": "user", "content": "go on"},
        ]
    )
    parsed = MESSAGES.parse(call(request))
    assert "secret" in classify(MESSAGES.classified(parsed.content))
    sent = MESSAGES.redact(parsed.content, ("secret",))
    assert SECRET not in json.dumps(sent)
