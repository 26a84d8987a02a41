"""Issue 33 review findings on the generic model path, end to end: the unmodified `openai` SDK
against a real sidecar and the stand-in provider (examples/demo/model_server.py). Each test is
the reviewer's proof (/tmp/r33) turned around: it asserts the leak no longer happens."""

# ruff: noqa: F811  (the fixtures are imported from test_model_apis)
from __future__ import annotations

import base64
import json
import select
import shutil
import socket
from pathlib import Path

import openai
import pytest

from sidecar.frontdoor import STREAM_QUEUE_EVENTS
from tests.conftest import ROOT
from tests.e2e.test_model_apis import (  # noqa: F401  (fixtures)
    PROVIDER_KEY,
    SECRET,
    api_sidecar,
    calls,
    sdk,
    start_api_sidecar,
)

TOKEN = "mcp-token-0f9e8d7c6b5a49382716"
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4o-mini",
    "output": [],
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
}


# --- H1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["tool_description", "tool_schema", "prompt_variables", "text_schema", "metadata"]
)
def test_review_h1_a_secret_in_any_responses_parameter_is_denied(api_sidecar, models, where):
    kwargs: dict = {}
    if where == "tool_description":
        kwargs["tools"] = [{"type": "function", "name": "f", "description": "key " + SECRET}]
    elif where == "tool_schema":
        schema = {"type": "object", "properties": {"k": {"type": "string", "default": SECRET}}}
        kwargs["tools"] = [{"type": "function", "name": "f", "parameters": schema}]
    elif where == "prompt_variables":
        kwargs["prompt"] = {"id": "pmpt_1", "variables": {"k": SECRET}}
    elif where == "text_schema":
        schema = {"type": "object", "description": SECRET}
        kwargs["text"] = {"format": {"type": "json_schema", "name": "x", "schema": schema}}
    else:
        kwargs["metadata"] = {"k": SECRET}
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(api_sidecar).responses.create(model="gpt-small", input="hi", **kwargs)
    assert "secret" in denied.value.body["reasons"][0]
    assert models.received == []


def test_review_h1_an_email_in_a_tool_description_is_redacted_before_the_provider(
    api_sidecar, models
):
    tools = [{"type": "function", "name": "f", "description": "mail ann@example.com"}]
    sdk(api_sidecar).responses.create(model="gpt-small", input="hi", tools=tools)
    [sent] = models.received
    assert sent.body["tools"][0]["description"] == "mail [REDACTED:email]"


def test_review_h1_a_secret_in_a_chat_tool_description_is_denied(api_sidecar, models):
    tools = [{"type": "function", "function": {"name": "f", "description": SECRET}}]
    with pytest.raises(openai.PermissionDeniedError):
        sdk(api_sidecar).chat.completions.create(
            model="gpt-small", messages=[{"role": "user", "content": "hi"}], tools=tools
        )
    assert models.received == []


def _file(text: bytes, mime: str = "text/plain") -> list[dict]:
    data = f"data:{mime};base64," + base64.b64encode(text).decode()
    return [
        {"role": "user", "content": [{"type": "input_file", "filename": "f", "file_data": data}]}
    ]


def test_review_h1_a_secret_in_a_base64_input_file_is_denied(api_sidecar, models):
    with pytest.raises(openai.PermissionDeniedError):
        sdk(api_sidecar).responses.create(model="gpt-small", input=_file(f"k {SECRET}".encode()))
    assert models.received == []


def test_review_h1_a_binary_input_file_is_refused_as_unclassifiable(api_sidecar, models):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_sidecar).responses.create(
            model="gpt-small", input=_file(b"%PDF-1.4\n\xff\xfe\x00", "application/pdf")
        )
    assert refused.value.body["code"] == "unclassifiable_input"
    assert models.received == []


# --- M1 -------------------------------------------------------------------------------------


def test_review_m1_background_responses_are_refused_before_relay(api_sidecar, models):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_sidecar).responses.create(
            model="gpt-small", input="hi", background=True, max_output_tokens=500
        )
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "background" in refused.value.message
    assert models.received == []


# --- M2 -------------------------------------------------------------------------------------


def test_review_m2_a_cut_stream_is_charged_at_least_its_reservation(api_sidecar, models):
    models.script(reply="one two three four five six", cut_after=6)
    with pytest.raises(openai.APIError):
        list(sdk(api_sidecar).responses.create(model="gpt-small", input="hi", stream=True))
    [record] = calls(api_sidecar)
    usage = record["model"]["usage"]
    assert usage["estimated"] is True
    assert usage["total_tokens"] >= 512  # the max_output_tokens obligation sent, at least


# --- M3 / M4 ----------------------------------------------------------------------------------


def _mcp_tool() -> dict:
    return {
        "type": "mcp",
        "server_label": "x",
        "server_url": "https://attacker.example/mcp",
        "authorization": TOKEN,
        "headers": {"X-Key": TOKEN},
        "require_approval": "never",
    }


def test_review_m3_a_remote_mcp_tool_is_denied_and_policy_sees_its_host(api_sidecar, models):
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(api_sidecar).responses.create(model="gpt-small", input="hi", tools=[_mcp_tool()])
    assert "provider-side mcp tool (target attacker.example)" in denied.value.body["reasons"][0]
    assert models.received == []
    [record] = calls(api_sidecar)
    assert record["outcome"]["code"] == "policy_deny"
    assert TOKEN not in json.dumps(record)  # (M4: denied calls too)


def _granting_mcp(tmp_path: Path) -> Path:
    """The baseline policy, its data granting gpt-small the mcp tool on attacker.example."""
    policy = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", policy)
    data_file = policy / "agentsidecar" / "data.json"
    data = json.loads(data_file.read_text())
    data["model_provider_tools"] = {
        "spiffe://demo.example/agent/support": {
            "gpt-small": [{"type": "mcp", "targets": ["attacker.example"]}]
        }
    }
    data_file.write_text(json.dumps(data))
    return policy


def test_review_m4_tool_credentials_never_reach_policy_input_or_the_audit_log(
    start_api_sidecar, models, tmp_path
):
    running = start_api_sidecar(policy={"dir": str(_granting_mcp(tmp_path))})
    sdk(running).responses.create(
        model="gpt-small", input="hi", tools=[_mcp_tool()], metadata={"api_key": TOKEN}
    )
    [sent] = models.received
    assert sent.body["tools"][0]["authorization"] == TOKEN  # the provider still gets it
    raw = running.audit_path.read_text()
    assert TOKEN not in raw
    [record] = calls(running)
    assert record["outcome"]["code"] == "ok"
    # policy saw the tool and its target host, and no credential
    assert record["input"]["action"]["arguments"]["provider_tools"] == [
        {"type": "mcp", "target": "attacker.example"}
    ]


# --- M5 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_review_m5_a_provider_error_keeps_its_status_message_and_retry_hints(
    api_sidecar, models, status, error
):
    models.script(
        error_status=status,
        error_message=f"PROVIDER SAYS WHY {PROVIDER_KEY}",
        error_headers={"Retry-After": "7", "retry-after-ms": "7000"},
    )
    with pytest.raises(error) as failed:
        sdk(api_sidecar).responses.create(model="gpt-small", input="hi")
    headers = failed.value.response.headers
    assert failed.value.status_code == status
    assert "x-should-retry" not in headers  # the SDK decides, as with the provider itself
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("7", "7000")
    body = failed.value.body
    assert "PROVIDER SAYS WHY" in body["message"] and body["code"] == "upstream_error"
    assert PROVIDER_KEY not in json.dumps(body)  # the key, echoed, is scrubbed


def test_review_m5_the_sdk_retries_a_provider_429_and_then_succeeds(api_sidecar, models):
    models.script(error_status=429, error_headers={"retry-after-ms": "1"})
    with pytest.raises(openai.RateLimitError):
        sdk(api_sidecar, max_retries=1).responses.create(model="gpt-small", input="hi")
    assert len(models.received) == 2  # retried once (the sidecar did not forbid it)


def test_review_m5_the_sidecars_own_refusals_still_say_do_not_retry(api_sidecar, models):
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(api_sidecar).responses.create(model="gpt-small", input="key " + SECRET)
    assert denied.value.response.headers["x-should-retry"] == "false"


# --- L1 / L2 / L4 ------------------------------------------------------------------------------


def test_review_l1_a_secret_split_by_a_changing_item_id_is_redacted(api_sidecar, models):
    base = {"output_index": 0, "content_index": 0, "logprobs": []}
    resp = {"id": "r", "object": "response", "status": "in_progress", "model": "m", "output": []}
    done = resp | {
        "status": "completed",
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    }
    models.script(
        events=[
            {"type": "response.created", "sequence_number": 0, "response": resp},
            {"type": "response.output_text.delta", "item_id": "m1", **base, "delta": SECRET[:16]},
            {"type": "response.output_text.delta", "item_id": "m2", **base, "delta": SECRET[16:]},
            {"type": "response.completed", "sequence_number": 3, "response": done},
        ]
    )
    events = list(sdk(api_sidecar).responses.create(model="gpt-small", input="hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "[REDACTED:secret]"


def _chunk(index: int, text: str, finish: str | None = None) -> dict:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}],
    }


def test_review_l2_chat_choices_stream_through_their_own_redactors(api_sidecar, models):
    usage = {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    models.script(
        events=[
            _chunk(0, "key " + SECRET[:14]),
            _chunk(1, "A"),
            _chunk(0, SECRET[14:]),
            _chunk(1, "B"),
            _chunk(0, "", "stop"),
            _chunk(1, "", "stop"),
            _chunk(0, "") | {"choices": [], "usage": usage},
            "[DONE]",
        ]
    )
    got = {0: "", 1: ""}
    for chunk in sdk(api_sidecar).chat.completions.create(
        model="gpt-small", messages=[{"role": "user", "content": "hi"}], n=2, stream=True
    ):
        for choice in chunk.choices:
            got[choice.index] += choice.delta.content or ""
    assert got == {0: "key [REDACTED:secret]", 1: "AB"}


def test_review_l4_an_escaped_secret_in_function_call_arguments_is_redacted(api_sidecar, models):
    arguments = '{"k":"\\u0073k-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"}'
    call = {
        "type": "function_call",
        "id": "fc1",
        "call_id": "c1",
        "name": "f",
        "arguments": arguments,
        "status": "completed",
    }
    models.script(answer=RESPONSE | {"output": [call]})
    response = sdk(api_sidecar).responses.create(model="gpt-small", input="hi")
    assert json.loads(response.output[0].arguments) == {"k": "[REDACTED:secret]"}
    [record] = calls(api_sidecar)
    assert record["upstream"]["response_classes"] == ["secret"]


# --- L7: a slow reader holds the relay back, not its memory -----------------------------------

EVENTS = 3000
PIECE = "w" * 4000


def test_review_l7_a_slow_reader_keeps_the_stream_queue_bounded(start_api_sidecar, models):
    running = start_api_sidecar(relay={"max_response_bytes": 64 * 1024 * 1024})
    models.script(events=[_chunk(0, PIECE) for _ in range(EVENTS)] + ["[DONE]"])
    door = running.sidecar.frontdoor
    body = json.dumps(
        {"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    agent = socket.socket()
    agent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    agent.connect(("127.0.0.1", door.port))
    agent.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # The agent reads nothing until the front door's queue is full (polled, bounded) ...
    for _ in range(6000):
        if door.peak_queued >= STREAM_QUEUE_EVENTS:
            break
        select.select([], [], [], 0.01)
    assert door.peak_queued == STREAM_QUEUE_EVENTS
    assert models.sent_events < EVENTS  # the provider is held back, not buffered in memory
    # ... then reads it all: every event arrives, and the queue never held more than its bound.
    agent.settimeout(60)
    received = b""
    while chunk := agent.recv(1 << 20):
        received += chunk
    agent.close()
    body = _unchunked(received)
    assert body.count(b"w") == EVENTS * len(PIECE)  # all the text (the redactor's held tail
    assert body.endswith(b"data: [DONE]\n\n")  # goes out in one more event at the end)
    assert door.peak_queued <= STREAM_QUEUE_EVENTS


def _unchunked(response: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked response."""
    rest = response.partition(b"\r\n\r\n")[2]
    body = b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        body, rest = body + rest[:length], rest[length + 2 :]
    return body
