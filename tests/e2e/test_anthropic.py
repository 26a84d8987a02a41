"""The Anthropic Messages API end to end (issue 33 item 3): the unmodified ``anthropic`` SDK
against the front door, a stand-in provider speaking the real Messages wire format over HTTP
and SSE (examples/demo/anthropic_server.py), the baseline policy, budgets and audit."""

from __future__ import annotations

import http.client
import json
import threading

import anthropic
import openai
import pytest

from examples.demo.anthropic_server import AnthropicServer
from tests.conftest import audit_lines

PROVIDER_KEY = "anthropic-provider-key-0123456789abcdef"
AGENT_KEY = "agent-api-key-that-must-go-nowhere"
AGENT_X_KEY = "agent-x-api-key-that-must-go-nowhere"
SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def provider():
    with AnthropicServer() as server:
        yield server


@pytest.fixture
def start_claude_sidecar(start_sidecar, tools, provider, tmp_path):
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(PROVIDER_KEY + "\n")

    def start(auth: str = "", **overrides):
        anthropic_provider = {
            "type": "anthropic",
            "base_url": provider.url + "/v1",
            "key_file": str(key_file),
            "anthropic_beta": ["prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"],
        }
        if auth:
            anthropic_provider["auth"] = auth
        config = {
            "providers": {
                "anthropic": anthropic_provider,
                "openai": {"base_url": "http://127.0.0.1:9/v1"},
            },
            "models": {
                "claude-small": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
                "gpt-small": {"provider": "openai", "model": "gpt-4o-mini"},
            },
            "frontdoor": {"listen": "127.0.0.1:0"},
        }
        return start_sidecar(tools.url, **(config | overrides))

    return start


@pytest.fixture
def claude_sidecar(start_claude_sidecar):
    return start_claude_sidecar()


def door(running) -> str:
    return running.sidecar.frontdoor.url.removesuffix("/v1")


def sdk(running, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=door(running), api_key=AGENT_KEY, **kwargs)


def records(running, rpc: str = "Messages") -> list[dict]:
    return [r for r in audit_lines(running.audit_path) if r["rpc"] == rpc]


def post(running, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", running.sidecar.frontdoor.port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), json.loads(data)


def test_item3_a_unary_message_through_the_front_door(claude_sidecar, provider):
    raw = sdk(claude_sidecar).messages.with_raw_response.create(
        model="claude-small",
        max_tokens=4000,
        system="be brief",
        messages=USER,
        extra_headers={"x-api-key": AGENT_X_KEY, "anthropic-beta": "agent-chosen-beta"},
    )
    message = raw.parse()
    assert message.content[0].text == "echo: hello there"
    assert message.model == "claude-small"  # the alias, not the provider's name
    [sent] = provider.received
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == PROVIDER_KEY  # the format's default scheme
    assert "authorization" not in sent.headers  # the agent's Bearer is not forwarded
    assert sent.headers["anthropic-version"] == "2023-06-01"  # configured, not the SDK's
    assert sent.headers["anthropic-beta"] == (  # as configured, not the agent's
        "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
    )
    assert sent.body["model"] == "claude-3-5-haiku-latest"
    assert sent.body["max_tokens"] == 512  # the max_tokens obligation
    assert sent.body["system"] == "be brief"
    everything = json.dumps(sent.headers) + json.dumps(sent.body)
    assert AGENT_KEY not in everything and AGENT_X_KEY not in everything
    [record] = records(claude_sidecar)
    assert raw.headers["x-agent-sidecar-decision-id"] == record["decision_id"]
    assert record["input"]["action"]["api"] == "messages"
    assert record["model"]["usage"] == {
        "prompt_tokens": 4,  # "be brief" + "hello there", one token a word
        "completion_tokens": 3,
        "total_tokens": 7,
        "estimated": False,
    }
    text = claude_sidecar.audit_path.read_text()
    assert PROVIDER_KEY not in text and AGENT_KEY not in text and AGENT_X_KEY not in text
    # An older client's x-api-key alone: ignored in pod mode, never forwarded either.
    body = json.dumps({"model": "claude-small", "max_tokens": 5, "messages": USER}).encode()
    status, _, answer = post(claude_sidecar, "/v1/messages", body, {"x-api-key": AGENT_X_KEY})
    assert (status, answer["content"][0]["text"]) == (200, "echo: hello there")
    assert AGENT_X_KEY not in json.dumps(provider.received[1].headers)


def test_item3_the_key_goes_as_a_bearer_when_configured_and_agent_credentials_never(
    start_claude_sidecar, provider
):
    running = start_claude_sidecar(auth="bearer")
    client = anthropic.Anthropic(
        base_url=door(running),
        api_key=AGENT_KEY,  # sent as Authorization: Bearer by this SDK
        max_retries=0,
        default_headers={"x-api-key": AGENT_X_KEY},
    )
    client.messages.create(model="claude-small", max_tokens=10, messages=USER)
    [sent] = provider.received
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "x-api-key" not in sent.headers
    assert AGENT_KEY not in json.dumps(sent.headers) and AGENT_X_KEY not in json.dumps(sent.headers)


def test_item3_a_streamed_message_with_a_tool_call(claude_sidecar, provider):
    provider.script(tool_use={"name": "lookup_order", "input": {"order": "A-17"}})
    with sdk(claude_sidecar).messages.stream(
        model="claude-small", max_tokens=100, messages=USER
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hello there"
    assert final.stop_reason == "tool_use"
    assert final.content[1].name == "lookup_order" and final.content[1].input == {"order": "A-17"}
    assert final.model == "claude-small"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)
    [sent] = provider.received
    assert sent.body["stream"] is True and sent.body["max_tokens"] == 100
    [record] = records(claude_sidecar)
    assert record["model"]["stream"] is True
    assert record["model"]["usage"]["total_tokens"] == 5
    assert record["outcome"]["code"] == "ok"


def test_item3_emails_in_system_prompt_and_tool_results_are_redacted_before_the_provider(
    claude_sidecar, provider
):
    messages = [
        {"role": "user", "content": "find my order"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "owner bob@example.com"}
            ],
        },
    ]
    sdk(claude_sidecar).messages.create(
        model="claude-small",
        max_tokens=10,
        system=[{"type": "text", "text": "you serve jane@example.com"}],
        messages=messages,
    )
    [sent] = provider.received
    assert sent.body["system"] == [{"type": "text", "text": "you serve [REDACTED:email]"}]
    assert sent.body["messages"][2]["content"][0]["content"] == "owner [REDACTED:email]"
    [record] = records(claude_sidecar)
    assert record["input"]["action"]["data_classes"] == ["email"]


@pytest.mark.parametrize("where", ["system", "tool_result", "tool_use"])
def test_item3_a_secret_anywhere_in_the_request_is_denied_without_retry(
    claude_sidecar, provider, where
):
    system = f"use {SECRET}" if where == "system" else "be brief"
    content = [
        {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"key": SECRET}}
        if where == "tool_use"
        else {"type": "text", "text": "ok"}
    ]
    result = [{"type": "tool_result", "tool_use_id": "t1", "content": f"token {SECRET}"}]
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": result if where == "tool_result" else "thanks"},
    ]
    client = sdk(claude_sidecar, max_retries=2)  # the SDK's default retries: not used
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client.messages.create(
            model="claude-small", max_tokens=10, system=system, messages=messages
        )
    error = denied.value.body
    assert error["type"] == "error"
    assert error["error"]["type"] == "permission_error"
    assert error["error"]["code"] == "policy_deny"
    assert len(error["error"]["decision_id"]) == 26
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert provider.received == []
    assert len(records(claude_sidecar)) == 1  # one call, not retried


@pytest.mark.parametrize("stream", [False, True])
def test_item3_secrets_in_answers_are_redacted_also_split_across_text_deltas(
    claude_sidecar, provider, stream
):
    half = len(SECRET) // 2
    provider.script(pieces=["the key is ", SECRET[:half], SECRET[half:], " ok"])
    text = _answer_text(claude_sidecar, stream)
    assert text == "the key is [REDACTED:secret] ok"
    [record] = records(claude_sidecar)
    assert record["upstream"]["response_classes"] == ["secret"]


@pytest.mark.parametrize("stream", [False, True])
def test_item3_a_provider_key_echoed_back_is_scrubbed(claude_sidecar, provider, stream):
    provider.script(echo_credentials=True)
    text = _answer_text(claude_sidecar, stream)
    assert PROVIDER_KEY not in text
    assert text.startswith("x-api-key=[REDACTED:credential]")
    [record] = records(claude_sidecar)
    assert record["upstream"]["credentials_scrubbed"] >= 1


def _answer_text(running, stream: bool) -> str:
    """The text of one message, streamed or not."""
    client = sdk(running)
    if stream:
        with client.messages.stream(model="claude-small", max_tokens=10, messages=USER) as s:
            return "".join(s.text_stream)
    answer = client.messages.create(model="claude-small", max_tokens=10, messages=USER)
    return answer.content[0].text


def _broken_stream(running) -> tuple[anthropic.APIStatusError, str]:
    """A streamed message the sidecar ends with an error event: the SDK's error and the text
    that arrived before it."""
    received = []
    with (
        pytest.raises(anthropic.APIStatusError) as broken,
        sdk(running).messages.stream(model="claude-small", max_tokens=10, messages=USER) as stream,
    ):
        for piece in stream.text_stream:
            received.append(piece)
    return broken.value, "".join(received)


@pytest.mark.parametrize(
    ("how", "code"),
    [("cut", "upstream_stream_interrupted"), ("error event", "upstream_stream_interrupted")],
)
def test_item6_a_stream_the_sidecar_ends_makes_the_sdk_raise_not_a_clean_message(
    claude_sidecar, provider, how, code
):
    if how == "cut":
        provider.script(reply="one two three four five six", cut_after=2)
    else:
        provider.script(reply="one two three four five six", error_after=2)
    broken, received = _broken_stream(claude_sidecar)
    assert broken.body["type"] == "error"
    assert broken.body["error"]["code"] == code
    assert received == "one two "  # what arrived before the break, and no more
    [record] = records(claude_sidecar)
    assert record["outcome"]["code"] == "upstream_stream_interrupted"
    assert record["model"]["usage"]["estimated"] is True


def test_item6_a_stalled_provider_ends_the_stream_with_an_error_event(
    start_claude_sidecar, provider
):
    running = start_claude_sidecar(
        providers={
            "anthropic": {
                "type": "anthropic",
                "base_url": provider.url + "/v1",
                "timeout_s": 0.5,  # the stall bound between reads
            }
        },
    )
    drip = threading.Event()  # never released: the provider stalls after the first delta
    provider.script(pieces=["a" * 400, "never sent"], drip=drip)
    broken, received = _broken_stream(running)
    drip.set()
    assert broken.body["error"]["code"] == "upstream_stream_interrupted"
    assert received == "a" * 400  # what arrived, released before the error
    [record] = records(running)
    assert record["outcome"]["code"] == "upstream_stream_interrupted"


def test_item3_a_slow_provider_streams_through_as_it_drips(claude_sidecar, provider):
    drip = threading.Event()
    provider.script(pieces=["a" * 400, " and the rest"], drip=drip)
    seen_before_release = []
    with sdk(claude_sidecar).messages.stream(
        model="claude-small", max_tokens=10, messages=USER
    ) as stream:
        for piece in stream.text_stream:
            seen_before_release.append(not drip.is_set())
            drip.set()  # the provider sends the rest only now
            text = piece
    # The first text reached the agent while the provider still held the rest back.
    assert seen_before_release[0] is True
    assert text  # and the stream completed


def test_item4_an_openai_alias_on_the_messages_route_is_a_clear_400(claude_sidecar, provider):
    with pytest.raises(anthropic.BadRequestError) as wrong:
        sdk(claude_sidecar).messages.create(model="gpt-small", max_tokens=10, messages=USER)
    assert wrong.value.body["type"] == "error"
    assert wrong.value.body["error"]["type"] == "invalid_request_error"
    assert wrong.value.response.headers["x-should-retry"] == "false"
    # And the other way round: an Anthropic alias on the chat route, in OpenAI's shape.
    client = openai.OpenAI(
        base_url=claude_sidecar.sidecar.frontdoor.url, api_key="x", max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="claude-small", messages=USER)
    assert "error" in chat.value.response.json()
    assert provider.received == []


def test_item3_bad_messages_requests_get_anthropic_shaped_400s(start_claude_sidecar, provider):
    running = start_claude_sidecar(frontdoor={"listen": "127.0.0.1:0", "max_request_bytes": 4096})
    no_max = json.dumps({"model": "claude-small", "messages": USER}).encode()
    status, headers, body = post(running, "/v1/messages", no_max)
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    for bad in (b"[1, 2]", b'{"model": "claude-small", "model": "x"}', b"\xff"):
        status, _, body = post(running, "/v1/messages", bad)
        assert status == 400 and body["type"] == "error", bad
    big = json.dumps(
        {
            "model": "claude-small",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * 5000}],
        }
    ).encode()
    status, _, body = post(running, "/v1/messages", big)
    assert status == 413 and body["error"]["type"] == "request_too_large"
    unknown_block = json.dumps(
        {
            "model": "claude-small",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "mystery", "data": "x"}]}],
        }
    ).encode()
    status, _, body = post(running, "/v1/messages", unknown_block)
    assert status == 400 and "not supported" in body["error"]["message"]
    assert provider.received == []


def test_item5_usage_is_charged_to_the_task_and_count_tokens_is_not(claude_sidecar, provider):
    with claude_sidecar.client() as grpc_client:
        task = grpc_client.start_task("summarise").task_id
    client = sdk(claude_sidecar, default_headers={"x-agent-sidecar-task-id": task})
    provider.script(cache_read=10)
    client.messages.create(model="claude-small", max_tokens=10, messages=USER)
    counted = client.messages.count_tokens(model="claude-small", messages=USER)
    assert counted.input_tokens == 2
    with client.messages.stream(model="claude-small", max_tokens=10, messages=USER) as s:
        s.get_final_message()
    with claude_sidecar.client() as grpc_client:
        tokens = grpc_client.end_task(task).tokens
    # (2 input + 10 cache reads + 3 output) twice; the count cost nothing
    assert tokens == 30
    assert [p.path for p in provider.received] == [
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages",
    ]
    assert "max_tokens" not in provider.received[1].body
    [count] = records(claude_sidecar, "CountTokens")
    assert count["input"]["action"]["api"] == "messages"
    assert count["input"]["action"]["arguments"]["count_tokens"] is True
    assert len(records(claude_sidecar)) == 2  # one record per call


def test_item3_count_tokens_is_decided_like_a_message(claude_sidecar, provider):
    client = sdk(claude_sidecar)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client.messages.count_tokens(
            model="claude-small", messages=[{"role": "user", "content": f"key {SECRET}"}]
        )
    assert denied.value.body["error"]["code"] == "policy_deny"
    assert provider.received == []


def test_item3_in_jwt_mode_the_sdk_api_key_or_x_api_key_carries_the_jwt_svid(
    start_jwt_sidecar, provider, authority, tmp_path
):
    from tests.conftest import SIDECAR_AUDIENCE

    running = start_jwt_sidecar(
        providers={"anthropic": {"type": "anthropic", "base_url": provider.url + "/v1"}},
        models={"claude-small": {"provider": "anthropic"}},
        frontdoor={"listen": "127.0.0.1:0"},
    )
    token = authority.issue_jwt("spiffe://demo.example/agent/support", [SIDECAR_AUDIENCE])
    client = anthropic.Anthropic(base_url=door(running), api_key=token, max_retries=0)
    assert client.messages.create(model="claude-small", max_tokens=5, messages=USER).content
    body = json.dumps({"model": "claude-small", "max_tokens": 5, "messages": USER}).encode()
    status, _, _ = post(running, "/v1/messages", body, {"x-api-key": token})
    assert status == 200
    for sent in provider.received:  # the JWT-SVID stays here
        assert token not in json.dumps(sent.headers)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk(running).messages.create(model="claude-small", max_tokens=5, messages=USER)
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert len(provider.received) == 2


def test_item6_a_budget_refusal_is_a_429_the_sdk_does_not_retry(start_claude_sidecar, provider):
    running = start_claude_sidecar(budgets={"task_tokens": 10})
    with running.client() as grpc_client:
        task = grpc_client.start_task("summarise").task_id
    client = sdk(running, max_retries=2, default_headers={"x-agent-sidecar-task-id": task})
    provider.script(reply="w " * 20)  # 2 + 20 tokens: past the budget after one call
    client.messages.create(model="claude-small", max_tokens=5, messages=USER)
    with pytest.raises(anthropic.RateLimitError) as exceeded:
        client.messages.create(model="claude-small", max_tokens=5, messages=USER)
    assert exceeded.value.body["error"]["type"] == "rate_limit_error"
    assert exceeded.value.body["error"]["code"] == "budget_exceeded"
    assert exceeded.value.response.headers["x-should-retry"] == "false"
    assert len(provider.received) == 1
    assert len(records(running)) == 2  # the refusal once, not three times
    with pytest.raises(anthropic.RateLimitError):  # over budget, counting is refused too
        client.messages.count_tokens(model="claude-small", messages=USER)
    assert len(provider.received) == 1


def test_item6_a_step_up_is_a_409_with_the_approval_id_in_anthropic_shape(
    start_claude_sidecar, provider
):
    running = start_claude_sidecar()
    with running.client() as grpc_client:
        task = grpc_client.start_task("long job").task_id
    client = sdk(running, default_headers={"x-agent-sidecar-task-id": task})
    provider.script(reply="w " * 20001)  # the task goes past 20000 tokens
    client.messages.create(model="claude-small", max_tokens=5, messages=USER)
    provider.script()
    with pytest.raises(anthropic.ConflictError) as step_up:
        client.messages.create(model="claude-small", max_tokens=5, messages=USER)
    error = step_up.value.body["error"]
    assert (error["type"], error["code"]) == ("approval_required", "approval_required")
    assert error["approval_id"] and len(error["decision_id"]) == 26
    assert step_up.value.response.headers["x-should-retry"] == "false"
    with running.approvals() as admin:
        admin.approve(error["approval_id"], reason="budget raised for this job")
    answer = client.messages.create(
        model="claude-small",
        max_tokens=5,
        messages=USER,
        extra_headers={"x-agent-sidecar-approval-id": error["approval_id"]},
    )
    assert answer.content[0].text == "echo: hello there"


def test_item3_the_messages_bench_reports_direct_and_front_door():
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "bench/messages_overhead.py", "--calls", "5"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "messages unary   added: p50" in done.stdout
    assert "messages stream  added: p50" in done.stdout


def test_item3_call_model_and_stream_model_over_grpc_with_api_messages(claude_sidecar, provider):
    import grpc

    from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

    channel = grpc.insecure_channel(claude_sidecar.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = sidecar_pb2.CallModelRequest(
        model="claude-small",
        api="messages",
        messages_json=json.dumps({"system": "be brief", "messages": USER}),
        parameters_json='{"max_tokens": 50}',
    )
    answer = stub.CallModel(request, timeout=10)
    assert answer.decision.effect == "allow"
    assert json.loads(answer.completion_json)["content"][0]["text"] == "echo: hello there"
    assert answer.usage.total_tokens == 7
    events = [
        json.loads(c.chunk_json) for c in stub.StreamModel(request, timeout=10) if c.chunk_json
    ]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "echo: hello there"
    counted = stub.CallModel(
        sidecar_pb2.CallModelRequest(
            model="claude-small", api="count_tokens", messages_json=json.dumps(USER)
        ),
        timeout=10,
    )
    assert json.loads(counted.completion_json) == {"input_tokens": 2}
    assert counted.usage.total_tokens == 0
    # The bare messages array works too; a missing max_tokens is INVALID_ARGUMENT.
    with pytest.raises(grpc.RpcError) as bad:
        stub.CallModel(
            sidecar_pb2.CallModelRequest(
                model="claude-small", api="messages", messages_json=json.dumps(USER)
            ),
            timeout=10,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [p.body["max_tokens"] for p in provider.received if "max_tokens" in p.body] == [50, 50]
    channel.close()


# --- review of issue 33 (R33): H2, H3, M2, M3, M4, M5, L5, L6 -----------------------------

MCP_TOKEN = "mcp-token-0f9e8d7c6b5a49382716"
MESSAGE = {"role": "user", "content": "hi"}


def _request_with_secret(where: str) -> tuple[list[dict], dict]:
    """The reviewer's carriers: a secret in a field the first cut did not classify."""
    doc = {
        "type": "document",
        "source": {"type": "content", "content": [{"type": "text", "text": f"key {SECRET}"}]},
    }
    user = [{"type": "text", "text": "hi"}]
    extra: dict = {}
    messages: list[dict] | None = None
    if where == "document_content":
        user = [doc, {"type": "text", "text": "summarise"}]
    elif where == "citations":
        cited = {
            "type": "char_location",
            "cited_text": SECRET,
            "document_index": 0,
            "start_char_index": 0,
            "end_char_index": 5,
        }
        messages = [
            MESSAGE,
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "see", "citations": [cited]}],
            },
            {"role": "user", "content": "go on"},
        ]
    elif where == "tool_description":
        extra["tools"] = [
            {"name": "f", "description": f"key {SECRET}", "input_schema": {"type": "object"}}
        ]
    elif where == "mcp_server":
        extra["extra_body"] = {
            "mcp_servers": [
                {"type": "url", "url": f"https://mcp.example/mcp?k={SECRET}", "name": "x"}
            ]
        }
    elif where == "image_url":
        user = [
            {
                "type": "image",
                "source": {"type": "url", "url": f"https://img.example/p.png?k={SECRET}"},
            }
        ]
    elif where == "extra_block_key":
        user = [{"type": "text", "text": "hi", "x": SECRET}]
    elif where == "metadata":
        extra["metadata"] = {"user_id": SECRET}
    elif where == "tool_result_document":
        messages = [
            MESSAGE,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [doc]}],
            },
        ]
    return messages or [{"role": "user", "content": user}], extra


@pytest.mark.parametrize(
    "where",
    [
        "document_content",
        "citations",
        "tool_description",
        "mcp_server",
        "image_url",
        "extra_block_key",
        "metadata",
        "tool_result_document",
    ],
)
def test_review_h2_a_secret_in_any_text_bearing_field_never_reaches_the_provider(
    claude_sidecar, provider, where
):
    messages, extra = _request_with_secret(where)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        sdk(claude_sidecar).messages.create(
            model="claude-small", max_tokens=10, messages=messages, **extra
        )
    assert denied.value.body["error"]["code"] == "policy_deny"
    assert provider.received == []
    [record] = records(claude_sidecar)
    assert "secret" in record["action"]["data_classes"]
    assert SECRET not in json.dumps(record)  # policy saw a summary, not the text


ANSWER_BLOCKS = {
    "citations": {
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
    "server_tool_use": {
        "type": "server_tool_use",
        "id": "srvtoolu_1",
        "name": "web_search",
        "input": {"query": SECRET},
    },
    "web_search_tool_result": {
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
}


@pytest.mark.parametrize("block", sorted(ANSWER_BLOCKS))
def test_review_h3_a_unary_answer_is_redacted_in_every_block(claude_sidecar, provider, block):
    provider.script(content=[ANSWER_BLOCKS[block]])
    message = sdk(claude_sidecar).messages.create(
        model="claude-small", max_tokens=10, messages=USER
    )
    assert SECRET not in message.model_dump_json()
    assert "[REDACTED:secret]" in message.model_dump_json()
    [record] = records(claude_sidecar)
    assert record["upstream"]["response_classes"] == ["secret"]


def _events(block: dict, deltas: list[dict], message_content: list | None = None) -> list[dict]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": message_content or [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": block},
        *[{"type": "content_block_delta", "index": 0, "delta": d} for d in deltas],
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]


HALF = len(SECRET) // 2
STREAMS = {
    "citations_delta": _events(
        {"type": "text", "text": "", "citations": []},
        [
            {"type": "text_delta", "text": "ok"},
            {
                "type": "citations_delta",
                "citation": {
                    "type": "char_location",
                    "cited_text": SECRET,
                    "document_index": 0,
                    "document_title": None,
                    "start_char_index": 0,
                    "end_char_index": 3,
                },
            },
        ],
    ),
    "block_start_text": _events(
        {"type": "text", "text": f"key {SECRET}"}, [{"type": "text_delta", "text": " ok"}]
    ),
    "split_over_start_and_delta": _events(
        {"type": "text", "text": f"key {SECRET[:HALF]}"},
        [{"type": "text_delta", "text": SECRET[HALF:]}],
    ),
    "thinking": _events(
        {"type": "thinking", "thinking": "", "signature": ""},
        [
            {"type": "thinking_delta", "thinking": f"the key {SECRET[:HALF]}"},
            {"type": "thinking_delta", "thinking": SECRET[HALF:]},
            {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_review_h3_a_stream_is_redacted_in_every_event(claude_sidecar, provider, case):
    provider.script(events=STREAMS[case])
    with sdk(claude_sidecar).messages.stream(
        model="claude-small", max_tokens=10, messages=USER
    ) as stream:
        final = stream.get_final_message()
    dumped = final.model_dump_json()
    assert SECRET not in dumped and SECRET[HALF:] not in dumped
    assert "[REDACTED:secret]" in dumped
    if case == "thinking":
        assert final.content[0].signature == "EqQBCgIYAhIM"  # kept (it then fails to verify)
    [record] = records(claude_sidecar)
    assert record["upstream"]["response_classes"] == ["secret"]  # L3: thinking counts


MCP_SERVERS = [
    {
        "type": "url",
        "url": "https://MCP.example:8443/x",
        "name": "x",
        "authorization_token": MCP_TOKEN,
    }
]
WEB_FETCH = [{"type": "web_fetch_20250910", "name": "web_fetch"}]


def test_review_m3_m4_provider_side_tools_are_denied_by_type_and_host_without_the_token(
    claude_sidecar, provider
):
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        sdk(claude_sidecar).messages.create(
            model="claude-small",
            max_tokens=10,
            messages=USER,
            tools=WEB_FETCH,
            extra_body={"mcp_servers": MCP_SERVERS},
        )
    error = denied.value.body["error"]
    assert error["code"] == "policy_deny"
    reasons = " ".join(error["reasons"])
    assert "provider-side mcp tool (target mcp.example)" in reasons
    assert "provider-side web_fetch tool" in reasons
    assert provider.received == []
    with open(claude_sidecar.audit_path) as audit:
        assert MCP_TOKEN not in audit.read()


def test_review_m3_m4_a_granted_mcp_server_is_relayed_and_its_token_never_audited(
    start_claude_sidecar, provider, tmp_path
):
    import shutil

    from tests.support.running import ROOT

    policy = tmp_path / "policy"
    shutil.copytree(ROOT / "rego", policy)
    data_file = policy / "agentsidecar" / "data.json"
    data = json.loads(data_file.read_text())
    data["model_provider_tools"] = {
        "spiffe://demo.example/agent/support": {
            "claude-small": [
                {"type": "mcp", "targets": ["mcp.example"]},
                {"type": "web_fetch", "targets": ["*"]},
            ]
        }
    }
    data_file.write_text(json.dumps(data))
    running = start_claude_sidecar(policy={"dir": str(policy)})
    sdk(running).messages.create(
        model="claude-small",
        max_tokens=10,
        messages=USER,
        tools=WEB_FETCH,
        extra_body={"mcp_servers": MCP_SERVERS},
    )
    [sent] = provider.received
    assert sent.body["mcp_servers"][0]["authorization_token"] == MCP_TOKEN  # for its server
    [record] = records(running)
    assert record["input"]["action"]["arguments"]["provider_tools"] == [
        {"type": "mcp", "target": "mcp.example"},
        {"type": "web_fetch", "target": ""},
    ]
    with open(running.audit_path) as audit:
        assert MCP_TOKEN not in audit.read()


def test_review_m2_a_cut_stream_of_thinking_and_tool_json_is_charged_for_it(
    claude_sidecar, provider
):
    think, tool_json = "x" * 3000, '{"a":"' + "y" * 3000 + '"}'
    events = _events(
        {"type": "thinking", "thinking": "", "signature": ""},
        [{"type": "thinking_delta", "thinking": think}],
    )[:4]
    events += [
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": tool_json},
        },
        {"type": "content_block_stop", "index": 1},
    ]  # (then the connection closes: no message_delta, no message_stop)
    provider.script(events=events)
    with (
        pytest.raises(anthropic.APIError),
        sdk(claude_sidecar).messages.stream(
            model="claude-small", max_tokens=500, messages=USER
        ) as stream,
    ):
        for _ in stream:
            pass
    [record] = records(claude_sidecar)
    assert record["model"]["usage"]["total_tokens"] >= 500  # not the 9 of text-only counting


def test_review_l5_a_thinking_budget_above_the_max_tokens_obligation_is_lowered(
    claude_sidecar, provider
):
    client = sdk(claude_sidecar)
    thinking = {"type": "enabled", "budget_tokens": 2000}
    client.messages.create(model="claude-small", max_tokens=4000, thinking=thinking, messages=USER)
    [sent] = provider.received
    assert sent.body["max_tokens"] == 512  # the baseline's max_tokens obligation
    # 512 leaves no room for Anthropic's minimum budget (1024): thinking is turned off
    assert sent.body["thinking"] == {"type": "disabled"}


def test_review_l6_count_tokens_counts_as_a_call_of_its_task(claude_sidecar, provider):
    with claude_sidecar.client() as grpc_client:
        task = grpc_client.start_task("count").task_id
    client = sdk(claude_sidecar, default_headers={"x-agent-sidecar-task-id": task})
    for _ in range(3):
        client.messages.count_tokens(model="claude-small", messages=USER)
    client.messages.create(model="claude-small", max_tokens=10, messages=USER)
    counts = [r["input"]["task"]["calls"] for r in records(claude_sidecar, "CountTokens")]
    [message] = records(claude_sidecar)
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert message["input"]["task"]["calls"] > counts[-1]  # policy sees every count


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (529, "overloaded_error", anthropic.InternalServerError),
    ],
)
def test_review_m5_a_provider_error_reaches_the_sdk_with_its_type_and_message(
    claude_sidecar, provider, status, kind, error
):
    provider.script(error=(status, kind, "PROVIDER SAYS WHY"))
    with pytest.raises(error) as raised:
        sdk(claude_sidecar).messages.create(model="claude-small", max_tokens=10, messages=USER)
    assert raised.value.status_code == status
    body = raised.value.body["error"]
    assert body["type"] == kind and "PROVIDER SAYS WHY" in body["message"]
    assert body["code"] == "upstream_error"
