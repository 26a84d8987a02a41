"""item 5: a credential the sidecar injected never reaches the agent through an upstream that
echoes its request: tool bodies and error bodies (JWT-SVID), provider completions, error
bodies and streams (provider key), unary and streamed; the audit counts what was scrubbed."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import grpc
import openai
import pytest

from examples.demo.model_server import ModelServer
from examples.demo.tools_server import Reply, ToolServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import audit_lines
from tests.integration.test_identity_pod import _pod, _with_jwt_auth
from tests.support.secret_forms import reveals

KEY = "sk-provider-0123456789abcdefghijklmnop"
MARK = "[REDACTED:credential]"


def _echo(status: int):
    return lambda r: Reply(
        status=status, body={"you_sent": dict(r.headers), "again": r.headers["authorization"]}
    )


@pytest.mark.parametrize("status", [200, 502], ids=["ok_body", "error_body"])
def test_item5_a_tool_upstream_echoing_its_request_never_returns_the_jwt_svid(
    start_sidecar,
    workload_api,
    status,
):
    with ToolServer({("GET", "/tickets/"): _echo(status)}) as upstream:
        running = start_sidecar(
            upstream.url,
            identity=_pod(workload_api.socket_path),
            targets=_with_jwt_auth(upstream.url),
        )
        assert running.sidecar.identity.wait_ready(10)  # else the call never reaches upstream
        payload = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "1"}')
        with grpc.insecure_channel(running.address) as channel:
            stub = sidecar_pb2_grpc.SidecarStub(channel)
            try:
                reply = stub.CallTool(payload, timeout=10)
                body = reply.body
            except grpc.RpcError as exc:
                body = (
                    b"".join(
                        v if isinstance(v, bytes) else v.encode()
                        for _, v in exc.trailing_metadata() or ()
                    )
                    + exc.details().encode()
                )
        token = upstream.received[0].headers["authorization"].removeprefix("Bearer ")
    assert token.count(".") == 2  # a JWT-SVID did go upstream
    assert token.encode() not in body
    record = audit_lines(running.audit_path)[0]
    assert record["upstream"]["credentials_scrubbed"] >= 1
    assert token not in json.dumps(record)
    if status == 200:
        assert MARK.encode() in body


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "openai.key"
    path.write_text(KEY + "\n")
    return path


def test_item5_a_provider_echoing_its_key_in_answers_and_streams_is_scrubbed(
    start_sidecar, tools, key_file
):
    with ModelServer() as models:
        models.script(reply=f"your key is {KEY}, and again {KEY}")
        running = start_sidecar(
            tools.url,
            providers={"openai": {"base_url": models.url, "key_file": str(key_file)}},
            models={"gpt-small": {"provider": "openai"}},
            frontdoor={"listen": "127.0.0.1:0"},
        )
        client = openai.OpenAI(
            base_url=running.sidecar.frontdoor.url, api_key="agent", max_retries=0
        )
        unary = client.chat.completions.create(model="gpt-small", messages=[
            {"role": "user", "content": "hi"}])  # fmt: skip
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="gpt-small", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if c.choices
        )
    for text in (unary.choices[0].message.content, streamed):
        assert KEY not in text
        assert text.count(MARK) == 2
    records = audit_lines(running.audit_path)
    assert [r["upstream"]["credentials_scrubbed"] for r in records] == [2, 2]
    assert KEY not in running.audit_path.read_text()


def test_item5_a_provider_error_quoting_the_key_is_scrubbed_over_grpc_and_the_front_door(
    start_sidecar, tools, key_file
):
    routes = {("POST", "/chat/completions"): _echo(401)}
    with ToolServer(routes) as provider:
        running = start_sidecar(
            tools.url,
            providers={"openai": {"base_url": provider.url, "key_file": str(key_file)}},
            models={"gpt-small": {"provider": "openai"}},
            frontdoor={"listen": "127.0.0.1:0"},
        )
        with grpc.insecure_channel(running.address) as channel:
            stub = sidecar_pb2_grpc.SidecarStub(channel)
            request = sidecar_pb2.CallModelRequest(
                model="gpt-small", messages_json='[{"role": "user", "content": "hi"}]'
            )
            with pytest.raises(grpc.RpcError) as failed:
                stub.CallModel(request, timeout=10)
        grpc_text = failed.value.details() + repr(failed.value.trailing_metadata())
        client = openai.OpenAI(
            base_url=running.sidecar.frontdoor.url, api_key="agent", max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as http_failed:
            client.chat.completions.create(
                model="gpt-small", messages=[{"role": "user", "content": "hi"}]
            )
        assert provider.received[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in grpc_text
    assert KEY not in http_failed.value.response.text
    assert KEY not in running.audit_path.read_text()


def _echo_encoded(r):
    """An upstream that sends the credential back encoded (a debug dump, a cursor)."""
    token = r.headers["authorization"].removeprefix("Bearer ")
    return Reply(
        body={
            "dump": base64.b64encode(f"auth={token};".encode()).decode(),
            "cursor": base64.urlsafe_b64encode(f"t:{token}".encode()).decode(),
            "hex": token.encode().hex(),
            "link": "https://x.example/?t=" + quote(token, safe=""),
        }
    )


def test_item3_a_tool_upstream_echoing_the_jwt_svid_encoded_never_returns_it(
    start_sidecar, workload_api
):
    """issue 32 item 3: the encodings apply to the shared scrubber, HTTP tool relays too."""
    with ToolServer({("GET", "/tickets/"): _echo_encoded}) as upstream:
        running = start_sidecar(
            upstream.url,
            identity=_pod(workload_api.socket_path),
            targets=_with_jwt_auth(upstream.url),
        )
        assert running.sidecar.identity.wait_ready(10)
        payload = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "1"}')
        with grpc.insecure_channel(running.address) as channel:
            reply = sidecar_pb2_grpc.SidecarStub(channel).CallTool(payload, timeout=10)
        token = upstream.received[0].headers["authorization"].removeprefix("Bearer ")
    body = json.loads(reply.body)
    assert set(body) == {"dump", "cursor", "hex", "link"}
    assert not reveals(reply.body.decode(), token)
    assert all(MARK in value for value in body.values())
    record = audit_lines(running.audit_path)[0]
    assert record["upstream"]["credentials_scrubbed"] == 4
    assert not reveals(running.audit_path.read_text(), token)


def test_item3_a_provider_streaming_its_key_hex_encoded_is_scrubbed(start_sidecar, tools, key_file):
    hexed = KEY.encode().hex()  # ~80 characters: split over several streamed chunks
    with ModelServer() as models:
        models.script(reply=f"debug {hexed} and {base64.b64encode(KEY.encode()).decode()}")
        running = start_sidecar(
            tools.url,
            providers={"openai": {"base_url": models.url, "key_file": str(key_file)}},
            models={"gpt-small": {"provider": "openai"}},
            frontdoor={"listen": "127.0.0.1:0"},
        )
        client = openai.OpenAI(
            base_url=running.sidecar.frontdoor.url, api_key="agent", max_retries=0
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="gpt-small", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if c.choices
        )
    assert not reveals(streamed, KEY) and streamed.count(MARK) == 2
    assert not reveals(running.audit_path.read_text(), KEY)
