"""Issue 33 (items 1, 2, 4, 6): the Responses API and embeddings through the front door and
over gRPC, driven by the unmodified `openai` SDK against a stand-in provider that speaks their
real wire formats (examples/demo/openai_wire.py); aliases per API format; errors in each API's
own shape."""

from __future__ import annotations

import json
import socket

import grpc
import openai
import pytest

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import audit_lines

PROVIDER_KEY = "sk-provider-0123456789abcdefghijklmnop"
AGENT_KEY = "agent-api-key-that-must-go-nowhere"
SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234"


@pytest.fixture
def start_api_sidecar(start_sidecar, tools, models, tmp_path):
    key_file = tmp_path / "openai.key"
    key_file.write_text(PROVIDER_KEY + "\n")

    def start(**overrides):
        config = {
            "providers": {
                "openai": {"base_url": models.url, "key_file": str(key_file)},
                "local": {"base_url": models.url},
                "anthropic": {"type": "anthropic", "base_url": models.url},
            },
            "models": {
                "gpt-small": {"provider": "openai", "model": "gpt-4o-mini"},
                "embed-small": {
                    "provider": "openai",
                    "model": "text-embedding-3-small",
                    "apis": ["embeddings"],
                },
                "local-small": {"provider": "local"},
                "claude-small": {"provider": "anthropic", "model": "claude-haiku"},
            },
            "frontdoor": {"listen": "127.0.0.1:0"},
        }
        return start_sidecar(tools.url, **(config | overrides))

    return start


@pytest.fixture
def api_sidecar(start_api_sidecar):
    return start_api_sidecar()


def sdk(running, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=running.sidecar.frontdoor.url, api_key=AGENT_KEY, **kwargs)


def calls(running) -> list[dict]:
    return audit_lines(running.audit_path)


# --- item 1: the Responses API ----------------------------------------------------------


def test_item1_a_unary_response_through_the_front_door(api_sidecar, models):
    raw = sdk(api_sidecar).responses.with_raw_response.create(
        model="gpt-small",
        input="hello there",
        instructions="be brief",
        max_output_tokens=4000,
        previous_response_id="resp_0",
        tools=[{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}],
    )
    response = raw.parse()
    assert response.output_text == "echo: hello there"
    assert response.model == "gpt-small"  # the alias, not the provider's name
    [sent] = models.received
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["max_output_tokens"] == 512  # capped by policy's max_tokens obligation
    assert sent.body["instructions"] == "be brief"
    assert sent.body["previous_response_id"] == "resp_0"  # passed through
    assert AGENT_KEY not in json.dumps(sent.headers) + json.dumps(sent.body)
    [record] = calls(api_sidecar)
    assert record["rpc"] == "Responses"
    assert raw.headers["x-agent-sidecar-decision-id"] == record["decision_id"]
    assert record["action"]["api"] == record["input"]["action"]["api"] == "responses"
    parameters = record["input"]["action"]["arguments"]["parameters"]
    assert parameters["previous_response_id"] == "resp_0"  # policy sees it
    assert parameters["tools"] == ["lookup_order"]  # tool names, not definitions
    assert record["input"]["action"]["arguments"]["input"] == {
        "count": 1,
        "chars": 11,
        "roles": ["user"],
        "types": ["message"],
    }
    # usage from the provider (one token per word: 2 in, 3 out)
    assert record["model"]["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "estimated": False,
    }


def test_item1_a_streamed_response_through_the_front_door(api_sidecar, models):
    stream = sdk(api_sidecar).responses.create(model="gpt-small", input="hello there", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: hello there"
    assert events[-1].response.output_text == "echo: hello there"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [sent] = models.received
    assert sent.body["stream"] is True
    [record] = calls(api_sidecar)
    assert (record["rpc"], record["model"]["stream"], record["outcome"]["code"]) == (
        "Responses",
        True,
        "ok",
    )
    assert record["model"]["usage"]["total_tokens"] == 5  # from response.completed


def test_item1_the_sdk_stream_helper_gets_the_final_response(api_sidecar, models):
    with sdk(api_sidecar).responses.stream(model="gpt-small", input="hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: hello there"


def test_item1_input_items_are_classified_and_redacted_before_the_provider(api_sidecar, models):
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "write to jane@example.com"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "owner: bob@example.com"},
    ]
    sdk(api_sidecar).responses.create(
        model="gpt-small", input=items, instructions="mail ann@example.com if stuck"
    )
    [sent] = models.received
    assert sent.body["input"][0]["content"][0]["text"] == "write to [REDACTED:email]"
    assert sent.body["input"][2]["output"] == "owner: [REDACTED:email]"
    assert sent.body["instructions"] == "mail [REDACTED:email] if stuck"
    assert "example.com" not in json.dumps(sent.body)
    [record] = calls(api_sidecar)
    assert record["input"]["action"]["data_classes"] == ["email"]
    assert record["input"]["action"]["arguments"]["input"]["types"] == [
        "function_call",
        "function_call_output",
        "message",
    ]


def test_item1_a_secret_in_a_function_call_output_is_denied_to_an_external_provider(
    api_sidecar, models
):
    items = [{"type": "function_call_output", "call_id": "c1", "output": f"token {SECRET}"}]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(api_sidecar).responses.create(model="gpt-small", input=items)
    assert denied.value.body["code"] == "policy_deny"
    assert "secret" in denied.value.body["reasons"][0]
    assert models.received == []


@pytest.mark.parametrize("helper", [False, True], ids=["create", "stream_helper"])
def test_item1_a_secret_split_across_output_deltas_never_reaches_the_agent(
    api_sidecar, models, helper
):
    models.script(reply=f"the key is {SECRET} ok", piece_chars=4)
    client = sdk(api_sidecar)
    if helper:
        with client.responses.stream(model="gpt-small", input="hi") as stream:
            events = list(stream)
            final = stream.get_final_response().output_text
    else:
        events = list(client.responses.create(model="gpt-small", input="hi", stream=True))
        final = events[-1].response.output_text
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final == "the key is [REDACTED:secret] ok"
    # the done and completed events repeat the whole text: redacted too, nothing of it leaks
    done = [e for e in events if e.type == "response.output_text.done"]
    assert done[0].text == "the key is [REDACTED:secret] ok"
    dumped = json.dumps([e.model_dump(warnings=False) for e in events])
    assert "ABCDEFGH" not in dumped and "sk-proj" not in dumped
    [record] = calls(api_sidecar)
    assert record["upstream"]["response_classes"] == ["secret"]


def test_item1_a_secret_in_streamed_function_call_arguments_is_redacted(api_sidecar, models):
    models.script(reply="calling", function_call=("lookup", json.dumps({"token": SECRET})))
    events = list(sdk(api_sidecar).responses.create(model="gpt-small", input="hi", stream=True))
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == '{"token": "[REDACTED:secret]"}'
    assert "ABCDEFGH" not in json.dumps([e.model_dump(warnings=False) for e in events])


@pytest.mark.parametrize("stream", [False, True])
def test_item1_a_provider_echoing_its_key_is_scrubbed(api_sidecar, models, stream):
    models.script(reply="ok", echo_key=True)
    client = sdk(api_sidecar)
    if stream:
        events = list(client.responses.create(model="gpt-small", input="hi", stream=True))
        dumped = json.dumps([e.model_dump(warnings=False) for e in events])
        text = events[-1].response.output_text
    else:
        response = client.responses.create(model="gpt-small", input="hi")
        dumped, text = response.model_dump_json(), response.output_text
    assert PROVIDER_KEY not in dumped
    assert text.startswith("ok key=Bearer ") and "[REDACTED" in text
    [record] = calls(api_sidecar)
    assert record["upstream"]["credentials_scrubbed"] >= 1


@pytest.mark.parametrize("helper", [False, True], ids=["create", "stream_helper"])
def test_item6_a_stream_cut_by_the_provider_raises_in_the_sdk(api_sidecar, models, helper):
    models.script(reply="one two three four five six", cut_after=6)
    client = sdk(api_sidecar)
    received = []
    with pytest.raises(openai.APIError) as broken:
        if helper:
            with client.responses.stream(model="gpt-small", input="hi") as stream:
                received.extend(e.type for e in stream)
        else:
            received.extend(
                e.type for e in client.responses.create(model="gpt-small", input="hi", stream=True)
            )
    assert broken.value.body["code"] == "upstream_stream_interrupted"
    assert len(broken.value.body["decision_id"]) == 26
    assert "response.completed" not in received  # never a clean end
    [record] = calls(api_sidecar)
    assert record["outcome"]["code"] == "upstream_stream_interrupted"
    assert record["model"]["usage"]["estimated"] is True


def test_item6_a_stream_the_provider_stalls_ends_with_the_error_event(
    start_api_sidecar, models, tmp_path
):
    """The sidecar ends the stream (the provider stalled past its timeout): the agent gets the
    text so far, then the error event, never response.completed."""
    running = start_api_sidecar(
        providers={"openai": {"base_url": models.url, "timeout_s": 1}},
        models={"gpt-small": {"provider": "openai"}},
    )
    gate = models.script(reply="one two three", gate_after=5)  # never released in time
    seen = []
    try:
        with pytest.raises(openai.APIError) as broken:
            for event in sdk(running).responses.create(model="gpt-small", input="hi", stream=True):
                seen.append(event.type)
    finally:
        gate.set()
    assert broken.value.body["code"] == "upstream_stream_interrupted"
    assert "response.output_text.delta" in seen and "response.completed" not in seen
    [record] = calls(running)
    assert record["outcome"]["code"] == "upstream_stream_interrupted"


def test_item1_a_slow_provider_stream_reaches_the_agent_as_it_comes(api_sidecar, models):
    gate = models.script(reply="one two three", gate_after=5)  # stalls after the first delta
    stream = sdk(api_sidecar).responses.create(model="gpt-small", input="hi", stream=True)
    seen = []
    for event in stream:
        seen.append(event.type)
        if event.type == "response.output_text.delta":
            gate.set()  # the provider still holds the rest: this delta was not buffered
    assert not models.gate_timed_out
    assert seen[-1] == "response.completed"


# --- item 2: embeddings -----------------------------------------------------------------


def test_item2_embeddings_are_classified_redacted_and_charged(api_sidecar, models):
    raw = sdk(api_sidecar).embeddings.with_raw_response.create(
        model="embed-small", input=["hello there", "write to jane@example.com"]
    )
    answer = raw.parse()
    assert [d.index for d in answer.data] == [0, 1]
    assert len(answer.data[0].embedding) == 3  # the SDK decoded the base64 it asked for
    assert answer.model == "embed-small"
    [sent] = models.received
    assert sent.body["input"] == ["hello there", "write to [REDACTED:email]"]
    assert sent.body["encoding_format"] == "base64"  # passed as the SDK sent it
    assert sent.body["model"] == "text-embedding-3-small"
    assert "max_tokens" not in sent.body and "max_output_tokens" not in sent.body
    [record] = calls(api_sidecar)
    assert (record["rpc"], record["input"]["action"]["api"]) == ("Embeddings", "embeddings")
    assert record["input"]["action"]["data_classes"] == ["email"]
    assert record["model"]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 5,
        "estimated": False,
    }


def test_item2_float_embeddings_and_a_string_input(api_sidecar, models):
    answer = sdk(api_sidecar).embeddings.create(
        model="embed-small", input="hello", encoding_format="float"
    )
    assert answer.data[0].embedding == [5.0, 0.5, -0.25]
    assert models.received[0].body["encoding_format"] == "float"


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]], ids=["array", "arrays"])
def test_item2_token_array_embeddings_are_refused(api_sidecar, models, tokens):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_sidecar).embeddings.create(model="embed-small", input=tokens)
    assert refused.value.body["code"] == "unclassifiable_input"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert models.received == []
    [record] = calls(api_sidecar)
    assert record["outcome"]["code"] == "unclassifiable_input"


# --- item 4: provider formats and the APIs an alias allows ------------------------------


@pytest.mark.parametrize(
    ("alias", "api"),
    [
        ("claude-small", "chat"),  # an anthropic-format alias on an OpenAI API
        ("claude-small", "responses"),
        ("embed-small", "chat"),  # an embeddings model asked to chat
        ("gpt-small", "embeddings"),  # a chat model asked for embeddings
    ],
)
def test_item4_an_alias_through_an_api_it_does_not_allow_is_400(api_sidecar, models, alias, api):
    client = sdk(api_sidecar)
    with pytest.raises(openai.BadRequestError) as refused:
        if api == "chat":
            client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}])
        elif api == "responses":
            client.responses.create(model=alias, input="x")
        else:
            client.embeddings.create(model=alias, input="x")
    assert refused.value.body["code"] == "wrong_model_api"
    assert api in refused.value.body["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert models.received == []
    [record] = calls(api_sidecar)
    assert record["action"]["api"] == api


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (
            {
                "providers": {"a": {"type": "anthropic", "base_url": "http://127.0.0.1:1"}},
                "models": {"c": {"provider": "a", "apis": ["chat"]}},
            },
            "models.c.apis: 'chat' is not served by anthropic-format provider",
        ),
        (
            {
                "providers": {"o": {"base_url": "http://127.0.0.1:1"}},
                "models": {"c": {"provider": "o", "apis": ["messages"]}},
            },
            "models.c.apis: 'messages' is not served by openai-format provider",
        ),
        (
            {
                "providers": {"o": {"base_url": "http://127.0.0.1:1"}},
                "models": {"c": {"provider": "o", "apis": ["telepathy"]}},
            },
            "models.c.apis[0]: 'telepathy' is not one of",
        ),
        (
            {"providers": {"o": {"base_url": "http://x", "headers": {"X-Api-Key": "k"}}}},
            "providers.o.headers: 'X-Api-Key' is set by the sidecar",
        ),
    ],
    ids=["chat_on_anthropic", "messages_on_openai", "unknown_api", "key_header"],
)
def test_item4_apis_a_provider_format_cannot_serve_are_config_errors(tmp_path, raw, words):
    from sidecar.config import ConfigError, parse_settings

    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(raw, source=tmp_path / "c.yaml")


def test_item4_policy_grants_per_alias_and_api(start_api_sidecar, models):
    """local-small is granted embeddings in the baseline data, but its configuration allows
    chat and responses only (the default); once configured for it, policy allows it."""
    running = start_api_sidecar(
        models={
            "local-small": {"provider": "local", "apis": ["chat", "responses", "embeddings"]},
            "gpt-small": {"provider": "openai", "apis": ["chat", "responses", "embeddings"]},
        }
    )
    client = sdk(running)
    assert client.embeddings.create(model="local-small", input="x").data
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.embeddings.create(model="gpt-small", input="x")  # configured, not granted
    assert denied.value.body["reasons"] == [
        "spiffe://demo.example/agent/support may not use model gpt-small through the embeddings api"
    ]
    assert len(models.received) == 1


def test_item4_models_lists_aliases_granted_through_any_api(api_sidecar):
    listed = [m.id for m in sdk(api_sidecar).models.list()]
    assert listed == ["claude-small", "embed-small", "gpt-small", "local-small"]


# --- item 6: errors in each API's shape --------------------------------------------------


def test_item6_a_denied_response_raises_permission_denied_with_code_and_no_retry(
    api_sidecar, models
):
    client = sdk(api_sidecar, max_retries=3)  # the SDK would retry what it may
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.responses.create(model="gpt-small", input="charge 4111 1111 1111 1111 please")
    body = denied.value.body
    assert body["code"] == "policy_deny" and body["type"] == "permission_error"
    assert len(body["decision_id"]) == 26
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert models.received == []
    assert len(calls(api_sidecar)) == 1  # asked once: no retry


def test_item6_a_denied_stream_is_an_error_before_any_event(api_sidecar, models):
    with pytest.raises(openai.PermissionDeniedError):
        list(
            sdk(api_sidecar).responses.create(
                model="gpt-small", input="card 4111 1111 1111 1111", stream=True
            )
        )
    assert models.received == []


def test_item6_a_provider_error_keeps_the_openai_shape(api_sidecar, models):
    models.script(error_status=400)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_sidecar).responses.create(model="gpt-small", input="hi")
    assert refused.value.body["code"] == "upstream_error"
    assert len(refused.value.body["decision_id"]) == 26


def test_item6_a_step_up_on_responses_is_409_with_the_approval_id(start_api_sidecar, models):
    running = start_api_sidecar()
    with running.client() as grpc_client:
        task = grpc_client.start_task("long job").task_id
    client = sdk(running, default_headers={"x-agent-sidecar-task-id": task})
    models.script(reply="w " * 20001)  # the task goes past 20000 tokens
    client.responses.create(model="gpt-small", input="hi")
    models.script()
    with pytest.raises(openai.ConflictError) as step_up:
        client.responses.create(model="gpt-small", input="hi")
    assert step_up.value.body["code"] == "approval_required"
    assert step_up.value.body["approval_id"]
    assert step_up.value.response.headers["x-should-retry"] == "false"


def _raw_post(running, path: str, body: bytes, length: int | None = None) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", running.sidecar.frontdoor.port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body) if length is None else length}"
            "\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings"])
def test_item6_bad_bodies_get_openai_shaped_errors(api_sidecar, models, path):
    cases = [
        (b"{nope", None, 400, "invalid_json"),
        (b"[1]", None, 400, "invalid_json"),
        (b"{}", 10**9, 413, "request_too_large"),
        (b'{"model": "gpt-small"}', None, 400, "invalid_arguments"),
        (b'{"model": "gpt-small", "input": 7}', None, 400, "invalid_arguments"),
        (b'{"model": "gpt-small", "input": [], "stream": true}', None, 400, "invalid_arguments"),
    ]
    for body, length, status, code in cases:
        if path == "/v1/embeddings" and body.startswith(b'{"model": "gpt-small"'):
            body = body.replace(b"gpt-small", b"embed-small")
        got, answer = _raw_post(api_sidecar, path, body, length)
        assert (got, answer["error"]["code"]) == (status, code), (path, body)
        assert answer["error"]["message"]
    assert models.received == []


def test_item1_oversized_instructions_are_refused(start_api_sidecar, models):
    running = start_api_sidecar(frontdoor={"listen": "127.0.0.1:0", "max_request_bytes": 4096})
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(running).responses.create(model="gpt-small", input="hi", instructions="x" * 5000)
    assert (refused.value.status_code, refused.value.body["code"]) == (413, "request_too_large")
    assert models.received == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_output_tokens", "9999"), ("max_output_tokens", 0), ("instructions", ["x"])],
)
def test_item1_wrong_typed_fields_are_refused(api_sidecar, models, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_sidecar).responses.create(model="gpt-small", input="hi", **{field: value})
    assert refused.value.body["code"] == "invalid_arguments"
    assert field in refused.value.body["message"]
    assert models.received == []


# --- over gRPC: CallModel / StreamModel with api ------------------------------------------


def test_item1_responses_and_embeddings_over_grpc(api_sidecar, models):
    channel = grpc.insecure_channel(api_sidecar.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = sidecar_pb2.CallModelRequest(
        model="gpt-small",
        api="responses",
        messages_json=json.dumps("hello there"),
        parameters_json=json.dumps({"instructions": "be brief", "max_output_tokens": 50}),
    )
    answer = stub.CallModel(request, timeout=10)
    response = json.loads(answer.completion_json)
    assert response["object"] == "response" and response["model"] == "gpt-small"
    assert response["output"][0]["content"][0]["text"] == "echo: hello there"
    assert answer.usage.total_tokens == 7
    chunks = list(stub.StreamModel(request, timeout=10))
    assert chunks[0].decision.effect == "allow"
    events = [json.loads(c.chunk_json) for c in chunks if c.chunk_json]
    assert events[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
        "echo: hello there"
    )
    assert chunks[-1].usage.total_tokens == 7  # (instructions count: 2 words)
    assert models.received[0].body["max_output_tokens"] == 50  # below the cap: kept
    embedded = stub.CallModel(
        sidecar_pb2.CallModelRequest(
            model="embed-small", api="embeddings", messages_json=json.dumps(["a b"])
        ),
        timeout=10,
    )
    assert json.loads(embedded.completion_json)["data"][0]["embedding"] == [3.0, 0.5, -0.25]
    with pytest.raises(grpc.RpcError) as wrong:
        stub.CallModel(
            sidecar_pb2.CallModelRequest(model="gpt-small", api="nope", messages_json='"x"'),
            timeout=10,
        )
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = calls(api_sidecar)
    assert [r["input"]["action"].get("api") for r in records[:3]] == [
        "responses",
        "responses",
        "embeddings",
    ]
    channel.close()
