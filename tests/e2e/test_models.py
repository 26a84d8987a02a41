"""Model calls end to end: the real `openai` SDK against the front door, a real
OpenAI-compatible upstream over HTTP and SSE, and the gRPC CallModel / StreamModel."""

from __future__ import annotations

import json
import logging
import re

import grpc
import openai
import pytest

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import audit_lines

PROVIDER_KEY = "sk-provider-0123456789abcdefghijklmnop"
AGENT_KEY = "agent-api-key-that-must-go-nowhere"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def start_model_sidecar(start_sidecar, tools, models, tmp_path):
    key_file = tmp_path / "openai.key"
    key_file.write_text(PROVIDER_KEY + "\n")

    def start(**overrides):
        config = {
            "providers": {
                "openai": {"base_url": models.url, "key_file": str(key_file)},
                "local": {"base_url": models.url},
            },
            "models": {
                "gpt-small": {"provider": "openai", "model": "gpt-4o-mini"},
                "gpt-huge": {"provider": "openai"},
                "local-small": {"provider": "local"},
            },
            "frontdoor": {"listen": "127.0.0.1:0"},
        }
        running = start_sidecar(tools.url, **(config | overrides))
        running.key_file = key_file
        return running

    return start


@pytest.fixture
def model_sidecar(start_model_sidecar):
    return start_model_sidecar()


def sdk(running, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=running.sidecar.frontdoor.url, api_key=AGENT_KEY, max_retries=0, **kwargs
    )


def test_a_unary_completion_through_the_front_door(model_sidecar, models, caplog):
    caplog.set_level(logging.DEBUG)
    raw = sdk(model_sidecar).chat.completions.with_raw_response.create(
        model="gpt-small", messages=USER, max_tokens=4000, temperature=0.2
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.model == "gpt-small"  # the alias, not the provider's name
    assert PROVIDER_KEY not in answer.model_dump_json()  # the agent never gets the key
    [sent] = models.received
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"  # the sidecar's key
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["max_tokens"] == 512  # capped by policy's max_tokens obligation
    assert sent.body["temperature"] == 0.2
    [record] = audit_lines(model_sidecar.audit_path)
    assert raw.headers["x-agent-sidecar-decision-id"] == record["decision_id"]
    assert record["model"]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "estimated": False,
    }
    assert (record["action"]["kind"], record["action"]["target"]) == ("model", "openai")
    assert record["input"]["action"]["arguments"]["messages"] == {
        "count": 1,
        "chars": 11,
        "roles": ["user"],
    }
    text = model_sidecar.audit_path.read_text() + "\n".join(caplog.messages)
    text += "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert PROVIDER_KEY not in text and AGENT_KEY not in text
    assert AGENT_KEY not in json.dumps(sent.headers) + json.dumps(sent.body)


def test_a_streamed_completion_through_the_front_door(model_sidecar, models):
    stream = sdk(model_sidecar).chat.completions.create(
        model="gpt-small", messages=USER, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: hello there"
    [sent] = models.received
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    [record] = audit_lines(model_sidecar.audit_path)
    assert record["model"]["stream"] is True
    assert record["model"]["usage"]["total_tokens"] == 5
    assert record["outcome"]["code"] == "ok"


def test_a_card_number_to_an_external_provider_is_denied(model_sidecar, models):
    card = [{"role": "user", "content": "charge 4111 1111 1111 1111 please"}]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(model_sidecar).chat.completions.create(model="gpt-small", messages=card)
    error = denied.value.body
    assert error["code"] == "policy_deny"
    assert error["reasons"] == ["data class credit_card may not be sent to external target openai"]
    assert len(error["decision_id"]) == 26
    assert models.received == []
    # The same prompt to a model on an internal provider is fine.
    sdk(model_sidecar).chat.completions.create(model="local-small", messages=card)
    assert "authorization" not in models.received[0].headers  # no key configured for it


def test_an_email_is_redacted_before_it_reaches_an_external_provider(model_sidecar, models):
    mail = [{"role": "user", "content": "write to jane@example.com today"}]
    sdk(model_sidecar).chat.completions.create(model="gpt-small", messages=mail)
    assert models.received[0].body["messages"] == [
        {"role": "user", "content": "write to [REDACTED:email] today"}
    ]


def test_models_outside_the_allow_list_are_denied_and_not_listed(model_sidecar, models):
    client = sdk(model_sidecar)
    assert [m.id for m in client.models.list()] == ["gpt-small", "local-small"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="gpt-huge", messages=USER)
    assert denied.value.body["reasons"] == [
        "spiffe://demo.example/agent/support may not use model gpt-huge"
    ]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=USER)
    assert unknown.value.body["code"] == "unknown_model"
    assert models.received == []


def test_a_budget_breach_is_denied_mid_task(start_model_sidecar, models):
    running = start_model_sidecar(budgets={"task_tokens": 10})
    with running.client() as grpc_client:
        task = grpc_client.start_task("summarise").task_id
    client = sdk(running, default_headers={"x-agent-sidecar-task-id": task})
    for _ in range(2):  # 5 tokens each: 0 < 10, then 5 < 10
        client.chat.completions.create(model="gpt-small", messages=USER)
    with pytest.raises(openai.RateLimitError) as exceeded:
        client.chat.completions.create(model="gpt-small", messages=USER)
    assert exceeded.value.body["code"] == "budget_exceeded"
    assert len(models.received) == 2
    records = [r for r in audit_lines(running.audit_path) if r["rpc"] == "ChatCompletions"]
    assert [r["input"]["task"]["tokens"] for r in records[:2]] == [0, 5]
    assert records[2]["outcome"]["code"] == "budget_exceeded"


def test_item15_a_stream_cut_by_the_upstream_is_a_clean_error_and_fully_audited(
    model_sidecar, models
):
    models.script(reply="one two three four five six", cut_after=2)
    stream = sdk(model_sidecar).chat.completions.create(
        model="gpt-small", messages=USER, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as broken:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content if chunk.choices else "")
    assert broken.value.body["code"] == "upstream_stream_interrupted"
    assert "".join(received) == "one two "  # what arrived before the break, and no more
    [record] = audit_lines(model_sidecar.audit_path)
    assert record["outcome"]["code"] == "upstream_stream_interrupted"
    assert record["outcome"]["relayed"] is True
    assert record["model"]["usage"]["estimated"] is True
    assert record["upstream"]["result"]["value"] == "one two "  # what the agent got
    # item 15: the text that reached the agent is charged, not only the prompt (issue 33
    # item 5: at its UTF-8 bytes, an upper bound for any script)
    assert record["model"]["usage"]["completion_tokens"] == len(b"one two ")


@pytest.mark.parametrize("stream", [False, True])
def test_secrets_in_answers_are_redacted(model_sidecar, models, stream):
    models.script(reply="the key is sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX1234 ok")
    client = sdk(model_sidecar)
    if stream:
        chunks = client.chat.completions.create(model="gpt-small", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        answer = client.chat.completions.create(model="gpt-small", messages=USER)
        text = answer.choices[0].message.content
    assert text == "the key is [REDACTED:secret] ok"
    [record] = audit_lines(model_sidecar.audit_path)
    assert record["upstream"]["response_classes"] == ["secret"]


def test_the_provider_key_file_is_read_again_when_it_changes(model_sidecar, models):
    client = sdk(model_sidecar)
    client.chat.completions.create(model="gpt-small", messages=USER)
    model_sidecar.key_file.write_text("sk-rotated-0123456789abcdefghijkl")
    client.chat.completions.create(model="gpt-small", messages=USER)
    assert [r.headers["authorization"] for r in models.received] == [
        f"Bearer {PROVIDER_KEY}",
        "Bearer sk-rotated-0123456789abcdefghijkl",
    ]
    model_sidecar.key_file.write_text("")
    with pytest.raises(openai.InternalServerError) as no_key:
        client.chat.completions.create(model="gpt-small", messages=USER)
    assert no_key.value.body["code"] == "credential_unavailable"
    assert len(models.received) == 2


def test_a_step_up_is_409_with_the_approval_id_and_the_retry_goes_through(
    start_model_sidecar, models
):
    running = start_model_sidecar()
    with running.client() as grpc_client:
        task = grpc_client.start_task("long job").task_id
    client = sdk(running, default_headers={"x-agent-sidecar-task-id": task})
    models.script(reply="w " * 20001)  # a huge answer: the task goes past 20000 tokens
    client.chat.completions.create(model="gpt-small", messages=USER)
    models.script()
    with pytest.raises(openai.ConflictError) as step_up:
        client.chat.completions.create(model="gpt-small", messages=USER)
    assert step_up.value.response.headers["x-should-retry"] == "false"
    approval_id = step_up.value.body["approval_id"]
    assert step_up.value.body["code"] == "approval_required"
    with running.approvals() as admin:
        admin.approve(approval_id, reason="budget raised for this job")
    answer = client.chat.completions.create(
        model="gpt-small",
        messages=USER,
        extra_headers={"x-agent-sidecar-approval-id": approval_id},
    )
    assert answer.choices[0].message.content == "echo: hello there"
    assert len(models.received) == 2


def test_call_model_and_stream_model_over_grpc(model_sidecar, models):
    channel = grpc.insecure_channel(model_sidecar.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = sidecar_pb2.CallModelRequest(
        model="gpt-small", messages_json=json.dumps(USER), parameters_json='{"max_tokens": 50}'
    )
    answer = stub.CallModel(request, timeout=10)
    assert answer.decision.effect == "allow"
    assert json.loads(answer.completion_json)["choices"][0]["message"]["content"] == (
        "echo: hello there"
    )
    assert answer.usage.total_tokens == 5
    chunks = list(stub.StreamModel(request, timeout=10))
    assert chunks[0].decision.effect == "allow"
    text = "".join(
        (json.loads(c.chunk_json)["choices"] or [{"delta": {}}])[0]["delta"].get("content", "")
        for c in chunks
        if c.chunk_json
    )
    assert text == "echo: hello there"
    assert chunks[-1].usage.total_tokens == 5
    assert models.received[0].body["max_tokens"] == 50  # below the cap: kept
    with pytest.raises(grpc.RpcError) as bad:
        stub.CallModel(
            sidecar_pb2.CallModelRequest(model="gpt-small", messages_json="[]"), timeout=10
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_in_jwt_mode_the_api_key_carries_the_jwt_svid(
    start_jwt_sidecar, models, authority, tmp_path
):
    from tests.conftest import SIDECAR_AUDIENCE

    running = start_jwt_sidecar(
        providers={"local": {"base_url": models.url}},
        models={"local-small": {"provider": "local"}},
        frontdoor={"listen": "127.0.0.1:0"},
    )
    token = authority.issue_jwt("spiffe://demo.example/agent/support", [SIDECAR_AUDIENCE])
    client = openai.OpenAI(base_url=running.sidecar.frontdoor.url, api_key=token, max_retries=0)
    assert client.chat.completions.create(model="local-small", messages=USER).choices
    assert "authorization" not in models.received[0].headers  # the JWT-SVID stays here
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(running).chat.completions.create(model="local-small", messages=USER)
    assert refused.value.body["code"] == "jwt_malformed"
    assert len(models.received) == 1


def test_a_front_door_port_in_use_fails_the_start_and_closes_what_opened(tools, tmp_path):
    import socket

    from sidecar.app import Sidecar
    from tests.support.running import sidecar_settings

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    settings = sidecar_settings(tmp_path, tools.url, frontdoor={"listen": f"127.0.0.1:{port}"})
    with pytest.raises(OSError, match="in use"):
        Sidecar.build(settings)
    busy.close()
    # Nothing was left holding the state database or the audit log: a new sidecar starts.
    settings = sidecar_settings(tmp_path, tools.url, frontdoor={"listen": f"127.0.0.1:{port}"})
    from tests.support.running import RunningSidecar

    running = RunningSidecar(settings)
    try:
        assert running.sidecar.frontdoor.port == port
    finally:
        running.stop()


def test_an_oversized_answer_is_refused(start_model_sidecar, models):
    running = start_model_sidecar(relay={"max_response_bytes": 1000})
    models.script(reply="x" * 2000)
    client = sdk(running)
    with pytest.raises(openai.APIStatusError) as unary:
        client.chat.completions.create(model="gpt-small", messages=USER)
    assert (unary.value.status_code, unary.value.body["code"]) == (
        502,
        "upstream_response_too_large",
    )
    # Streamed: refused before the first chunk reached the agent, so a plain 502.
    with pytest.raises(openai.APIStatusError) as streamed:
        list(client.chat.completions.create(model="gpt-small", messages=USER, stream=True))
    assert (streamed.value.status_code, streamed.value.body["code"]) == (
        502,
        "upstream_response_too_large",
    )
    codes = [r["outcome"]["code"] for r in audit_lines(running.audit_path)]
    assert codes == ["upstream_response_too_large"] * 2


def test_bad_front_door_requests_get_clear_openai_shaped_errors(model_sidecar, models):
    import http.client

    port = model_sidecar.sidecar.frontdoor.port

    def send(method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest(method, path)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        return response.status, answer["error"]

    url = "/v1/chat/completions"
    cases = [
        ("POST", url, b"{nope", {"Content-Length": "5"}, 400, "invalid_json"),
        ("POST", url, b"[1]", {"Content-Length": "3"}, 400, "invalid_json"),
        ("POST", url, b"{}", {"Content-Length": "x"}, 400, "malformed_http"),
        ("POST", url, None, {}, 411, "length_required"),
        ("POST", url, b"{}", {"Content-Length": str(10**9)}, 413, "request_too_large"),
        ("POST", "/v1/images/generations", b"{}", {"Content-Length": "2"}, 404, "not_found"),
        ("GET", "/v1/files", None, {}, 404, "not_found"),
        (
            "POST",
            url,
            b'{"model": "gpt-small"}',
            {"Content-Length": "22"},
            400,
            "invalid_arguments",
        ),
    ]
    for method, path, body, headers, status, code in cases:
        got_status, error = send(method, path, body, headers)
        assert (got_status, error["code"]) == (status, code), (path, body, headers)
        assert error["message"]
    assert models.received == []


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(None, True), (100000.0, False), ("100000", False), (True, False), (0, False), (-5, False)],
    ids=["null", "float", "string", "bool", "zero", "negative"],
)
def test_item1_max_tokens_of_any_type_never_reaches_the_provider_uncapped(
    model_sidecar, models, value, accepted
):
    """Policy caps max_tokens at 512: whatever type the agent sends, the provider gets an
    integer <= 512, or the call is refused as malformed (front door and CallModel)."""
    import requests

    body = {"model": "gpt-small", "messages": USER, "max_tokens": value}
    answer = requests.post(
        model_sidecar.sidecar.frontdoor.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {AGENT_KEY}"},
        timeout=10,
    )
    channel = grpc.insecure_channel(model_sidecar.address)
    stub = sidecar_pb2_grpc.SidecarStub(channel)
    request = sidecar_pb2.CallModelRequest(
        model="gpt-small",
        messages_json=json.dumps(USER),
        parameters_json=json.dumps({"max_tokens": value}),
    )
    if accepted:
        assert answer.status_code == 200, answer.text
        stub.CallModel(request, timeout=10)
        assert [r.body["max_tokens"] for r in models.received] == [512, 512]
    else:
        assert answer.status_code == 400
        assert "max_tokens must be a positive integer" in answer.text
        with pytest.raises(grpc.RpcError) as refused:
            stub.CallModel(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert models.received == []
    channel.close()


def test_item1_a_card_number_sent_as_a_json_number_is_seen_by_policy(model_sidecar, tools):
    """The redact/data-class obligations read numbers too: policy sees the card class in a
    number and the external target never gets it."""
    with model_sidecar.client() as client:
        task = client.start_task("t").task_id
        with pytest.raises(Exception) as denied:
            client.call_tool(
                "partner.notify", {"note": "x", "card": 4111111111111111}, task_id=task
            )
    assert getattr(denied.value, "code", "") == "policy_deny"
    assert "credit_card" in str(denied.value)
    assert tools.received == []


def test_item4_concurrent_calls_cannot_overshoot_a_budget_by_more_than_one_estimate(
    start_model_sidecar, models
):
    """20 calls at once against a 1,000-token task budget, each really using 61 tokens (the
    provider counts words) and reserving 354 (300 prompt bytes, 4 of framing, max_tokens 50):
    what the task is charged exceeds the budget by less than one call's estimate. Before
    reservations all 20 were relayed (1,220 tokens)."""
    running = start_model_sidecar(budgets={"task_tokens": 1000})
    models.script(reply="ok")
    with running.client() as grpc_client:
        task = grpc_client.start_task("summarise").task_id
    client = sdk(running, default_headers={"x-agent-sidecar-task-id": task})
    prompt = [{"role": "user", "content": "word " * 60}]

    def call(_: int) -> str:
        try:
            client.chat.completions.create(model="gpt-small", messages=prompt, max_tokens=50)
            return "ok"
        except openai.RateLimitError as exc:
            return exc.body["code"]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(call, range(20)))
    assert set(outcomes) == {"ok", "budget_exceeded"}, outcomes
    relayed = outcomes.count("ok")
    assert len(models.received) == relayed
    records = [r for r in audit_lines(running.audit_path) if r["rpc"] == "ChatCompletions"]
    charged = sum(r["model"]["usage"]["total_tokens"] for r in records if r["model"].get("usage"))
    assert charged == 61 * relayed
    assert charged < 1000 + 354
    # Settled to the real usage: the task holds what the provider reported, no reservation.
    rows = running.sidecar.calls.models._budgets._db.query(
        "SELECT tokens FROM tasks WHERE id = ?", (task,)
    )
    assert rows[0]["tokens"] == charged


def _raw_front_door(running, request: bytes, *, half_close: bool = False) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", running.sidecar.frontdoor.port), timeout=10) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = json.dumps({"model": "gpt-small", "messages": USER}).encode()
DUPLICATE_KEYS = b'{"model": "gpt-small", "model": "gpt-huge", "messages": [1, 2]}'


@pytest.mark.parametrize(
    ("request_bytes", "half_close"),
    [
        (HEAD + b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(BODY) + BODY, False),
        (
            HEAD
            + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(BODY)
            + BODY
            + HEAD
            + b"Content-Length: %d\r\n\r\n" % len(BODY)
            + BODY,
            False,
        ),
        (HEAD + b"Content-Length: %d\r\n\r\n" % (len(BODY) + 50) + BODY, True),
        (
            HEAD
            + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(DUPLICATE_KEYS)
            + DUPLICATE_KEYS,
            False,
        ),
    ],
    ids=["two_lengths", "length_and_chunked_smuggling", "short_body", "duplicate_json_keys"],
)
def test_item10_front_door_framing_is_exact(model_sidecar, models, request_bytes, half_close):
    answer = _raw_front_door(model_sidecar, request_bytes, half_close=half_close)
    # (HTTP/1.0 when the request line itself could not be trusted)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    assert len(re.findall(rb"HTTP/1\.[01] ", answer)) == 1  # nothing hidden ran as a request
    assert models.received == []


def test_item11_idle_connections_time_out_and_connections_are_capped(start_model_sidecar):
    import socket

    running = start_model_sidecar(
        frontdoor={"listen": "127.0.0.1:0", "read_timeout_s": 1, "max_connections": 4}
    )
    port = running.sidecar.frontdoor.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as over:
            assert over.recv(1) == b""  # over the cap: closed at accept
        for conn in idle:  # idle and half-open: closed after read_timeout_s
            assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
    client = sdk(running)
    assert client.chat.completions.create(model="gpt-small", messages=USER).choices
