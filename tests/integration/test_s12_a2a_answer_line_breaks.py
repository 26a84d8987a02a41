"""Review s12 F2, F3, F7 inbound: what a line is, for the sidecar and for the a2a-sdk client.

The SDK client reads SSE lines with httpx ``aiter_lines``, which splits like
``str.splitlines``: at VT, FF, FS, GS, RS, NEL, U+2028 and U+2029 as well as CR and LF. The
sidecar read only CR and LF, so ``:<U+2028><U+2028>data: {"id":"someone-else"}`` was a
comment to the sidecar (passed on, its ids never recorded) and a second event under another
id to the client (F2); a re-encoded event carried U+2028 raw, so the client could not parse a
valid event (F3); a unary answer that is JSON but not an object passed on unchanged (F7).
Real sidecar, TLS, a hostile agent on a real socket, and the SDK's own SSE reader
(``parse_sse_stream``) and client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.transports.http_helpers import parse_sse_stream
from a2a.types import Message, Part, Role, SendMessageRequest
from google.protobuf.json_format import MessageToDict

from tests.integration.test_a2a_inbound import PLANNER, client_tls, post
from tests.integration.test_review_s11_a2a_inbound import ScriptedAgent, scripted_listener, send
from tests.integration.test_s12_a2a_answer_ids import INTRUDER, Tap, line, reply, run_stream
from tests.support.a2a_inbound_agent import agent_card

# Every line break of str.splitlines but CR and LF (the reviewer's seven, and GS).
BREAKS = {
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "NEL-U+0085": "\x85",
    "FF": "\x0c",
    "VT": "\x0b",
    "FS": "\x1c",
    "GS": "\x1d",
    "RS": "\x1e",
}
# Breaks JSON may hold raw inside a string (the others are control characters).
RAW_IN_JSON = {k: v for k, v in BREAKS.items() if v >= "\x80"}
SMUGGLED = json.dumps(reply(INTRUDER, "smuggled"))


def sdk_view(raw: bytes) -> list[dict]:
    """The events the a2a-sdk client's own SSE reader dispatches from ``raw``, as JSON
    (a JSONDecodeError: an event the client cannot parse)."""

    async def read() -> list[dict]:
        response = httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
        return [json.loads(data) async for _, data in parse_sse_stream(response)]

    return asyncio.run(read())


def texts(events: list[dict]) -> list[str]:
    return [e["result"]["message"]["parts"][0]["text"] for e in events]


@pytest.mark.parametrize("skill", ["plain", "answer"])  # answer: redact_response
@pytest.mark.parametrize("brk", list(BREAKS.values()), ids=list(BREAKS))
def test_item_f2_a_break_only_the_sdk_client_splits_at_ends_the_stream(
    start_jwt_sidecar, authority, tmp_path, brk, skill
):
    """The reviewer's probe: a comment ending in two such breaks, then a data line under
    another id. Nothing of the event reaches the caller; the stream ends (fail closed)."""
    events = (
        line(reply(1, "mine"))
        + f":{brk}{brk}data: {SMUGGLED}\n\n".encode()
        + line(reply(1, "after"))
    )
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    assert INTRUDER.encode() not in raw and brk.encode() not in raw
    seen = sdk_view(raw)
    assert all(e["id"] == 1 for e in seen) and texts(seen) in ([], ["mine"])
    assert record["outcome"]["code"] == "agent_bad_response"


WHERE = {
    "comment": ": note{brk}data: {doc}\n\n",
    "event-line": "event: x{brk}data: {doc}\n\n",
    "id-line": "id: 3{brk}data: {doc}\r\n\r\n",
    "retry-line": "retry: 5{brk}data: {doc}\n\n",
    "unknown-field": "x-field: 1{brk}{brk}data: {doc}\n\n",
    "event-of-a-comment-only": ":{brk}data: {doc}\n\n",
}


@pytest.mark.parametrize("skill", ["plain", "answer"])
@pytest.mark.parametrize("where", list(WHERE.values()), ids=list(WHERE))
def test_item_f2_a_break_in_any_non_data_line_ends_the_stream(
    start_jwt_sidecar, authority, tmp_path, where, skill
):
    """Hostile: the hiding line is a comment, an event:, id:, retry: or unknown field, alone
    or after a data line, written in 2-byte pieces (the break straddles the sidecar's reads)."""
    hidden = where.format(brk="\u2028", doc=SMUGGLED).encode()
    events = line(reply(1, "mine")) + hidden
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body, piece=2)
    assert INTRUDER.encode() not in raw
    assert all(e["id"] == 1 for e in sdk_view(raw))
    assert record["outcome"]["code"] == "agent_bad_response"


@pytest.mark.parametrize("skill", ["plain", "answer"])
@pytest.mark.parametrize("brk", list(RAW_IN_JSON.values()), ids=list(RAW_IN_JSON))
def test_item_f2_f3_a_break_inside_the_data_is_re_encoded_escaped(
    start_jwt_sidecar, authority, tmp_path, brk, skill
):
    """Legal JSON (the break raw inside a string) under the caller's own id: once passed byte
    for byte (the client cut the line and could not parse it); now re-encoded with the break
    escaped, the JSON otherwise the same, and the client reads the text intact."""
    text = f"one{brk}two{brk}{brk}data: three"
    doc = reply(1, text)
    events = f"data: {json.dumps(doc, ensure_ascii=False)}\n\n".encode()
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    assert brk.encode() not in raw and f"\\u{ord(brk):04x}".encode() in raw
    seen = sdk_view(raw)
    assert [e["id"] for e in seen] == [1] and texts(seen) == [text]
    assert seen == [doc]
    assert record["outcome"]["code"] == "ok"


@pytest.mark.parametrize("brk", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e"], ids=lambda b: hex(ord(b)))
def test_item_f2_a_control_break_inside_the_data_is_not_json(
    start_jwt_sidecar, authority, tmp_path, brk
):
    """A control character is never raw in a JSON string: such an event is not JSON-RPC."""
    events = f'data: {{"jsonrpc":"2.0","id":1,"result":{{"t":"a{brk}data: {SMUGGLED}"}}}}\n\n'
    body = send("hi", "plain", "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events.encode(), body)
    assert INTRUDER.encode() not in raw and sdk_view(raw) == []
    assert record["outcome"]["code"] == "agent_bad_response"


def test_item_f2_an_agents_charset_is_not_passed_on(start_jwt_sidecar, authority, tmp_path):
    """Hostile: labelled latin-1, the UTF-8 of "Å" (C3 85) ends in NEL for the client; SSE is
    UTF-8, so the caller gets the stream labelled text/event-stream without the charset."""
    agent = ScriptedAgent(
        line(reply(1, "mine")) + f":Ådata: {SMUGGLED}\n\n".encode(),
        "text/event-stream; charset=latin-1",
    )
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        tls = client_tls(authority, tmp_path, PLANNER)
        body = send("hi", "plain", "SendStreamingMessage")
        with (
            httpx.Client(verify=tls, timeout=30) as http,
            http.stream("POST", running.url, json=body, headers={"A2A-Version": "1.0"}) as s,
        ):
            assert s.headers["content-type"] == "text/event-stream"
            lines = list(s.iter_lines())  # the client's own decoding of the caller's stream
        data = [x for x in lines if x.startswith("data:")]
        assert len(data) == 1 and INTRUDER not in data[0]  # the comment stays a comment
    finally:
        agent.stop()


def test_item_f3_the_sdk_client_reads_re_encoded_line_separators(
    start_jwt_sidecar, authority, tmp_path
):
    """The unmodified SDK client: the agent answers under a forged id (so every event is
    re-encoded) with U+2028, U+2029 and NEL raw in its texts; the client parses each event
    and gets each text as the agent wrote it."""
    text = "a\u2028b\u2029c\x85d"
    stream = b"".join(
        f"data: {json.dumps(doc, ensure_ascii=False)}\r\n\r\n".encode()
        for doc in (
            {
                "jsonrpc": "2.0",
                "id": INTRUDER,
                "result": {
                    "task": {
                        "id": "t-1",
                        "contextId": "c-1",
                        "status": {"state": "TASK_STATE_WORKING"},
                        "metadata": {"note": text},
                    }
                },
            },
            {
                "jsonrpc": "2.0",
                "id": INTRUDER,
                "result": {
                    "statusUpdate": {
                        "taskId": "t-1",
                        "contextId": "c-1",
                        "status": {"state": "TASK_STATE_COMPLETED"},
                        "metadata": {"note": text},
                    }
                },
            },
        )
    )
    agent = ScriptedAgent(stream, "text/event-stream")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        tap = Tap(verify=client_tls(authority, tmp_path, PLANNER))

        async def ask() -> list[Any]:
            async with httpx.AsyncClient(transport=tap, timeout=30) as http:
                config = ClientConfig(streaming=True, httpx_client=http)
                client = await create_client(agent_card(running.url), client_config=config)
                message = Message(role=Role.ROLE_USER, message_id="m-1", parts=[Part(text="hi")])
                message.metadata.update({"skill": "plain"})
                return [e async for e in client.send_message(SendMessageRequest(message=message))]

        events = [MessageToDict(e) for e in asyncio.run(ask())]
        assert events[0]["task"]["metadata"]["note"] == text
        assert events[-1]["statusUpdate"]["metadata"]["note"] == text
        assert len(events) == 2 and INTRUDER.encode() not in tap.received
        assert "\u2028".encode() not in tap.received and b"\\u2028" in tap.received
    finally:
        agent.stop()


NOT_OBJECTS = {
    "batch-array": json.dumps([reply(INTRUDER, "batch")]),
    "string": json.dumps(INTRUDER),
    "number": "7",
    "true": "true",
    "null": "null",
}


@pytest.mark.parametrize("skill", ["plain", "answer"])
@pytest.mark.parametrize("answer", list(NOT_OBJECTS.values()), ids=list(NOT_OBJECTS))
def test_item_f7_a_unary_answer_that_is_json_but_not_an_object_is_refused(
    start_jwt_sidecar, authority, tmp_path, answer, skill
):
    """Once passed on unchanged, under the agent's ids and with none recorded."""
    agent = ScriptedAgent(answer.encode(), "application/json")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        got = post(running, send("hi", skill), tls=client_tls(authority, tmp_path, PLANNER))
        assert INTRUDER not in got.text
        assert got.json()["error"]["data"]["code"] == "agent_bad_response"
        assert got.json()["id"] == 1
    finally:
        agent.stop()
