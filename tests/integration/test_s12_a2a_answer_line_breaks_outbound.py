"""Review s12 F2, F3, F7 outbound: a peer's answer on its way to the local agent.

The peer's stream is read by the spec (CR, LF), the agent's a2a-sdk client reads it like
``str.splitlines`` (sidecar/a2a/sse_split.py): an event with such a break outside its data
ends the stream (``peer_bad_response``, nothing of it passed on), the events the sidecar
writes escape U+2028, U+2029 and NEL so the client parses them, and a unary answer that is a
JSON array is no JSON-RPC response. Real sidecar, a hostile peer on a real socket, the SDK's
own SSE reader and client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest
from google.protobuf.json_format import MessageToDict

from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_grpc import AGENT, PEER
from tests.integration.test_a2a_outbound import Outbound
from tests.integration.test_s12_a2a_answer_ids import INTRUDER, Tap, line, reply
from tests.integration.test_s12_a2a_answer_ids_outbound import (
    POLICY,
    ScriptedPeer,
    send,
    stream_raw,
)
from tests.integration.test_s12_a2a_answer_line_breaks import (
    BREAKS,
    RAW_IN_JSON,
    SMUGGLED,
    WHERE,
    sdk_view,
    texts,
)
from tests.support.policies import write_policy


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    agent = ScriptedPeer()
    yield agent
    agent.stop()


@pytest.fixture
def outbound(start_jwt_sidecar, authority, peer, tmp_path) -> Outbound:
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={"billing": PEER["billing"] | {"url": peer.url}},
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def _ends_with_peer_bad_response(outbound: Outbound, raw: bytes) -> None:
    seen = sdk_view(raw)  # the agent's client parses every event it gets
    assert INTRUDER.encode() not in raw and all(e["id"] == 7 for e in seen)
    assert seen[-1]["error"]["data"]["code"] == "peer_bad_response"
    assert "smuggled" not in json.dumps(seen)
    [record] = outbound.records()
    assert record["outcome"]["code"] == "peer_bad_response"


@pytest.mark.parametrize("skill", ["", "lookup"])  # lookup: redact_response
@pytest.mark.parametrize("brk", list(BREAKS.values()), ids=list(BREAKS))
def test_item_f2_outbound_a_break_only_the_sdk_client_splits_at_ends_the_stream(
    outbound, peer, brk, skill
):
    def answer(sent_id: Any) -> tuple[bytes, str]:
        hidden = f":{brk}{brk}data: {SMUGGLED}\n\n".encode()
        return line(reply(sent_id, "mine")) + hidden, "text/event-stream"

    peer.answer = answer
    raw = stream_raw(outbound, send(7, "SendStreamingMessage", skill))
    _ends_with_peer_bad_response(outbound, raw)


@pytest.mark.parametrize("where", list(WHERE.values()), ids=list(WHERE))
def test_item_f2_outbound_a_break_in_any_non_data_line_ends_the_stream(outbound, peer, where):
    peer.answer = lambda sent_id: (
        line(reply(sent_id, "mine")) + where.format(brk="\u2029", doc=SMUGGLED).encode(),
        "text/event-stream",
    )
    raw = stream_raw(outbound, send(7, "SendStreamingMessage", ""))
    _ends_with_peer_bad_response(outbound, raw)


@pytest.mark.parametrize("skill", ["", "lookup"])
@pytest.mark.parametrize("brk", list(RAW_IN_JSON.values()), ids=list(RAW_IN_JSON))
def test_item_f3_outbound_events_escape_line_separators(outbound, peer, brk, skill):
    """The peer's legal JSON (the break raw inside a string): the agent's client reads the
    text intact; the sidecar wrote the break escaped, never raw."""
    text = f"one{brk}{brk}data: two"
    peer.answer = lambda sent_id: (
        f"data: {json.dumps(reply(sent_id, text), ensure_ascii=False)}\n\n".encode(),
        "text/event-stream",
    )
    raw = stream_raw(outbound, send(7, "SendStreamingMessage", skill))
    assert brk.encode() not in raw and f"\\u{ord(brk):04x}".encode() in raw
    seen = sdk_view(raw)
    assert [e["id"] for e in seen] == [7] and texts(seen) == [text]
    # The audit log holds the text with U+2028 raw: read by LF (conftest's splitlines cuts it)
    lines = Path(outbound.running.audit_path).read_bytes().split(b"\n")
    [record] = [r for r in map(json.loads, filter(None, lines)) if r["type"] == "call"]
    assert record["outcome"]["code"] == "ok"


def test_item_f3_outbound_the_sdk_client_reads_line_separators(outbound, peer):
    """The unmodified SDK client, streaming: a task and its end, each naming U+2028, U+2029
    and NEL raw in its metadata."""
    text = "a\u2028b\u2029c\x85d"

    def answer(sent_id: Any) -> tuple[bytes, str]:
        task = {"id": "t-1", "contextId": "c-1", "metadata": {"note": text}}
        docs = (
            {"task": task | {"status": {"state": "TASK_STATE_WORKING"}}},
            {
                "statusUpdate": {
                    "taskId": "t-1",
                    "contextId": "c-1",
                    "status": {"state": "TASK_STATE_COMPLETED"},
                    "metadata": {"note": text},
                }
            },
        )
        raw = (json.dumps(reply(sent_id, "") | {"result": d}, ensure_ascii=False) for d in docs)
        body = b"".join(f"data: {doc}\n\n".encode() for doc in raw)
        return body, "text/event-stream"

    peer.answer = answer
    tap = Tap()

    async def ask() -> list[Any]:
        async with httpx.AsyncClient(transport=tap, headers=outbound.headers(), timeout=30) as http:
            config = ClientConfig(streaming=True, httpx_client=http)
            client = await create_client(outbound.url, client_config=config)
            message = Message(role=Role.ROLE_USER, message_id="m-1", parts=[Part(text="hi")])
            return [e async for e in client.send_message(SendMessageRequest(message=message))]

    events = [MessageToDict(e) for e in asyncio.run(ask())]
    assert events[0]["task"]["metadata"]["note"] == text
    assert events[-1]["statusUpdate"]["metadata"]["note"] == text
    assert "\u2028".encode() not in tap.received and b"\\u2028" in tap.received


@pytest.mark.parametrize(
    "answer",
    [json.dumps([reply(INTRUDER, "batch")]), json.dumps(INTRUDER), "7", "null"],
    ids=["batch-array", "string", "number", "null"],
)
def test_item_f7_outbound_a_unary_answer_that_is_json_but_not_an_object_is_refused(
    outbound, peer, answer
):
    peer.answer = lambda _id: (answer.encode(), "application/json")
    got = outbound.post(send(7, "SendMessage", ""))
    doc = got.json()
    assert doc["id"] == 7 and doc["error"]["data"]["code"] == "peer_bad_response"
    assert INTRUDER not in got.text
    [record] = outbound.records()
    assert record["outcome"]["code"] == "peer_bad_response"
