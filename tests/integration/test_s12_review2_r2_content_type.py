"""Review 2 s12, R2: the sidecar decides what the agent's answer is from what it reads and
labels it itself. The old pass-back took a stream only for a Content-Type *starting* with
``text/event-stream`` and passed the agent's Content-Type on, while the a2a-sdk client reads
a stream wherever ``text/event-stream`` appears in it: an agent answering
``application/x-ndjson; profile=text/event-stream`` had its events reach the caller unread
(no id recorded, none re-keyed: another caller's id passed). Real listener (TLS, real
SVIDs), a hostile agent on a real socket, the a2a-sdk client's own stream reader."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from a2a.client.transports.http_helpers import send_http_stream_request

from tests.integration.test_a2a_inbound import INTERN, PLANNER, client_tls, records
from tests.integration.test_review_s11_a2a_inbound import ScriptedAgent, scripted_listener, send

OTHER_ID = "OTHER-CALLERS-ID"
TASK = "task-r2"
EVENT = {
    "jsonrpc": "2.0",
    "id": OTHER_ID,
    "result": {"task": {"id": TASK, "contextId": "ctx-r2", "status": {"state": "working"}}},
}
SSE = b"data: " + json.dumps(EVENT).encode() + b"\n\n"
# Types an SSE client reads as a stream though they do not start with text/event-stream.
SSE_ISH = [
    "application/x-ndjson; profile=text/event-stream",
    "Text/Event-Stream",
    "TEXT/EVENT-STREAM; charset=latin-1",
    "application/json, text/event-stream",
]


def exchange(running, body: dict, tls) -> tuple[httpx.Headers, bytes]:
    with (
        httpx.Client(verify=tls, timeout=30) as http,
        http.stream("POST", running.url, json=body, headers={"A2A-Version": "1.0"}) as s,
    ):
        return s.headers, b"".join(s.iter_bytes())


def sdk_reads(headers: httpx.Headers, raw: bytes) -> list[dict]:
    """What the unmodified a2a-sdk client's stream reader yields for this answer."""

    async def read() -> list[dict]:
        def handler(_request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                200, headers={"content-type": headers["content-type"]}, content=raw
            )

        out: list[dict] = []
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            async for data in send_http_stream_request(client, "POST", "http://sidecar/"):
                out.append(json.loads(data))
        return out

    return asyncio.run(read())


def _run(start_jwt_sidecar, tmp_path, agent: ScriptedAgent):
    return scripted_listener(start_jwt_sidecar, tmp_path, agent)


@pytest.mark.parametrize("kind", SSE_ISH)
def test_r2_a_stream_under_any_type_an_sse_client_reads_is_read_and_relabelled(
    start_jwt_sidecar, authority, tmp_path, kind
):
    agent = ScriptedAgent(SSE, kind)
    try:
        running = _run(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        body = send("hi", "plain", "SendStreamingMessage") | {"id": "planner-1"}
        headers, raw = exchange(running, body, planner)
        assert headers["content-type"] == "text/event-stream"  # the sidecar's, not the agent's
        assert OTHER_ID.encode() not in raw
        seen = sdk_reads(headers, raw)
        assert [e["id"] for e in seen] == ["planner-1"]
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "ok"
        # the task id was recorded as the planner's: the intern may not name it
        get = {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": TASK}}
        _, intern_raw = exchange(running, get, client_tls(authority, tmp_path, INTERN))
        assert json.loads(intern_raw)["error"]["data"]["code"] == "task_not_owned"
        _, own = exchange(running, get, planner)
        assert b"task_not_owned" not in own
    finally:
        agent.stop()


@pytest.mark.parametrize("kind", SSE_ISH)
def test_r2_a_body_not_sse_json_under_an_sse_type_is_agent_bad_response(
    start_jwt_sidecar, authority, tmp_path, kind
):
    agent = ScriptedAgent(b"data: not json at all\n\n", kind)
    try:
        running = _run(start_jwt_sidecar, tmp_path, agent)
        body = send("hi", "plain", "SendStreamingMessage")
        _, raw = exchange(running, body, client_tls(authority, tmp_path, PLANNER))
        assert b"not json at all" not in raw
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "agent_bad_response"
    finally:
        agent.stop()


UNARY = json.dumps({"jsonrpc": "2.0", "id": OTHER_ID, "result": {"message": {"parts": []}}})


@pytest.mark.parametrize(
    ("kind", "payload", "label"),
    [
        ("text/html; charset=utf-7", UNARY.encode(), "application/json"),
        ("application/x-ndjson", UNARY.encode(), "application/json"),
        ("", UNARY.encode(), "application/json"),
        ("text/html", b"<html>502 Bad Gateway</html>", "application/octet-stream"),
        ("application/json", b"\xff\xfe not json", "application/octet-stream"),
        ("text/event-strea", b"data: x\n\n", "application/octet-stream"),  # not a stream
    ],
)
def test_r2_a_unary_answer_is_labelled_by_the_sidecar(
    start_jwt_sidecar, authority, tmp_path, kind, payload, label
):
    agent = ScriptedAgent(payload, kind)
    try:
        running = _run(start_jwt_sidecar, tmp_path, agent)
        headers, raw = exchange(
            running, send("hi", "plain") | {"id": "p-1"}, client_tls(authority, tmp_path, PLANNER)
        )
        assert headers["content-type"] == label
        assert sdk_reads_nothing(headers)
        if label == "application/json":
            assert json.loads(raw)["id"] == "p-1"  # re-keyed: read as JSON-RPC
        else:
            assert raw == payload  # carries no id: passed as sent, never labelled a stream
    finally:
        agent.stop()


def sdk_reads_nothing(headers: httpx.Headers) -> bool:
    return "text/event-stream" not in headers["content-type"]
