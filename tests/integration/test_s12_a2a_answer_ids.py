"""Session 12 h3, item 1 inbound: every event of the agent's streamed answer reaches the
remote caller under the caller's own JSON-RPC id, obligation or not (the old pass-back sent an
unobligated stream on with whatever id the agent wrote: another caller's, a forged one,
null). Against the real listener (TLS, real SVIDs), a hostile agent on a real socket
(tests/integration/test_review_s11_a2a_inbound.py ScriptedAgent) and the unmodified a2a-sdk
client. The caller's view is read with an SSE parser that follows the spec (CR, LF and CRLF
each end a line), so a line only a client would see cannot hide from the test either."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest
from aiohttp import web
from google.protobuf.json_format import MessageToDict

from tests.integration.test_a2a_inbound import INTERN, PLANNER, client_tls, post, records
from tests.integration.test_review_s11_a2a_inbound import (
    MAIL,
    ScriptedAgent,
    raw_stream,
    scripted_listener,
    send,
)
from tests.support.a2a_inbound_agent import agent_card

INTRUDER = "intruder-7"
_MISSING = object()


def caller_view(raw: bytes) -> list[dict]:
    """The events an SSE client dispatches from ``raw`` (WHATWG: CRLF, LF or a lone CR ends
    a line, a blank line dispatches, an unended event at the end is dropped, a BOM opening
    the stream is skipped), as JSON."""
    text = raw.decode().removeprefix("\ufeff")  # a BOM opening the stream is skipped
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    events, data = [], []
    for line in lines[:-1]:  # the last piece has no line end: never dispatched
        if not line:
            if data:
                events.append(json.loads("\n".join(data)))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events


def reply(rpc_id: Any, text: str, **extra: Any) -> dict:
    message = {"messageId": "x", "role": "ROLE_AGENT", "parts": [{"text": text}]}
    doc = {"jsonrpc": "2.0", "id": rpc_id, "result": {"message": message}} | extra
    if rpc_id is _MISSING:
        del doc["id"]
    return doc


def line(doc: dict, end: str = "\r\n") -> bytes:
    return f"data: {json.dumps(doc)}{end}{end}".encode()


def run_stream(start_jwt_sidecar, authority, tmp_path, events: bytes, body: dict, piece=1 << 20):
    agent = ScriptedAgent(events, "text/event-stream", piece)
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        raw = raw_stream(running, body, client_tls(authority, tmp_path, PLANNER))
        [record] = records(running.audit_path, 1)
        return raw, record
    finally:
        agent.stop()


# (the caller's id, the id the agent wrote): forged, null, absent, the same value of another
# JSON type, another request's id.
IDS = {
    "forged": (1, INTRUDER),
    "null": (1, None),
    "missing": (1, _MISSING),
    "string-1": (1, "1"),
    "float-1": (1, 1.0),
    "true": (1, True),
    "another-request": ("req-7", "req-8"),
    "int-for-a-string": ("1", 1),
    "object": (1, {"id": 1}),
}


@pytest.mark.parametrize("skill", ["plain", "answer"])  # answer: redact_response
@pytest.mark.parametrize(("caller_id", "agent_id"), list(IDS.values()), ids=list(IDS))
def test_s12_1_every_streamed_event_comes_back_under_the_callers_id(
    start_jwt_sidecar, authority, tmp_path, skill, caller_id, agent_id
):
    good = line(reply(caller_id, "first"))  # already the caller's: passes as written
    events = (
        good
        + line(reply(agent_id, f"second {MAIL}"))
        + b"event: update\r\nid: 9\r\n"
        + line(reply(agent_id, "third"))[:-4]
        + b"\r\n: note\r\n\r\n"
    )
    body = send("hi", skill, "SendStreamingMessage") | {"id": caller_id}
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    seen = caller_view(raw)
    assert [e["id"] for e in seen] == [caller_id] * 3
    assert all(type(e["id"]) is type(caller_id) and e["jsonrpc"] == "2.0" for e in seen)
    texts = [e["result"]["message"]["parts"][0]["text"] for e in seen]
    if skill == "plain":
        assert texts == ["first", f"second {MAIL}", "third"]
        assert raw.startswith(good)  # byte for byte
        assert b"event: update\r\nid: 9\r\ndata: " in raw and raw.endswith(b": note\r\n\r\n")
    else:
        assert texts == ["first", "second [REDACTED:email]", "third"]
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["bytes"] == len(raw)


@pytest.mark.parametrize("skill", ["plain", "answer"])
def test_s12_1_every_event_re_keyed_however_the_agent_splits_its_writes(
    start_jwt_sidecar, authority, tmp_path, skill
):
    """Hostile: 3-byte writes, so event ends and ids straddle the sidecar's reads."""
    events = b"".join(line(reply(i, f"n{i}"), end) for i, end in [(None, "\n"), (2, "\r\n")] * 5)
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body, piece=3)
    seen = caller_view(raw)
    assert [e["id"] for e in seen] == [1] * 10
    assert [e["result"]["message"]["parts"][0]["text"] for e in seen] == ["nNone", "n2"] * 5
    assert record["outcome"]["code"] == "ok"


def test_s12_1_a_stream_already_under_the_callers_id_passes_byte_for_byte(
    start_jwt_sidecar, authority, tmp_path
):
    """Control: an agent that keeps JSON-RPC's rule is not re-encoded (comments, retry:,
    event: and id: lines, LF and CRLF ends, spacing inside the JSON all kept)."""
    events = (
        b": hello\n\nretry: 500\n\n"
        + line(reply(1, "a"), "\n")
        + b'event: x\r\ndata: {"jsonrpc": "2.0",  "id": 1,\r\ndata: "result": {}}\r\n\r\n'
        + line(reply(1, "b"))
    )
    body = send("hi", "plain", "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    assert raw == events
    assert record["outcome"]["code"] == "ok"


class CrossAgent(ScriptedAgent):
    """Answers each stream under the id of the request before it: another caller's."""

    async def _post(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        stolen = self.bodies[-2]["id"] if len(self.bodies) > 1 else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(line(reply(stolen, "yours")) + line(reply(stolen, "done")))
        await response.write_eof()
        return response


def test_s12_1_an_agent_answering_under_another_callers_id_never_hands_it_on(
    start_jwt_sidecar, authority, tmp_path
):
    agent = CrossAgent(b"", "text/event-stream")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        intern = client_tls(authority, tmp_path, INTERN)
        raw_stream(
            running, send("a", "plain", "SendStreamingMessage") | {"id": "planner-1"}, planner
        )
        body = send("b", "plain", "SendStreamingMessage") | {"id": "intern-1"}
        raw = raw_stream(running, body, intern)
        assert agent.bodies[-1]["id"] == "intern-1"  # the agent did get the intern's id...
        assert b"planner-1" not in raw  # ...and answered under the planner's: not passed on
        assert [e["id"] for e in caller_view(raw)] == ["intern-1", "intern-1"]
    finally:
        agent.stop()


_OTHER = json.dumps(reply(INTRUDER, "forged"))
_GOOD = json.dumps(reply(1, "ok"))
# Lines only a client's parser reads so (a lone CR ends an SSE line; a BOM opening the stream
# is skipped): each comes out under the caller's id, or, when the client would read two
# documents as one event, not at all.
HIDDEN = {
    "comment-hides-a-data-line": (f": note\rdata: {_OTHER}\n\n", "ok"),
    "id-line-hides-a-data-line": (f"id: 3\rdata: {_OTHER}\r\n\r\n", "ok"),
    "a-bom-hides-the-first-data-line": (f"\ufeffdata: {_OTHER}\n\n", "ok"),
    "data-then-cr-data": (f"data: {_GOOD}\rdata: {_OTHER}\n\n", "agent_bad_response"),
    "cr-cr-splits-an-event": (f"data: {_GOOD}\r\rdata: {_OTHER}\n\n", "agent_bad_response"),
}


@pytest.mark.parametrize("skill", ["plain", "answer"])
@pytest.mark.parametrize(("events", "outcome"), list(HIDDEN.values()), ids=list(HIDDEN))
def test_s12_1_a_data_line_only_a_client_reads_never_carries_another_id(
    start_jwt_sidecar, authority, tmp_path, events, outcome, skill
):
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events.encode(), body)
    assert INTRUDER.encode() not in raw
    seen = caller_view(raw)
    assert [e["id"] for e in seen] == ([1] if outcome == "ok" else [])
    assert record["outcome"]["code"] == outcome


NOT_RESPONSES = {
    "not-json": b"data: not json at all\n\n",
    "a-list": b"data: [1, 2]\n\n",
    "neither-result-nor-error": b'data: {"jsonrpc": "2.0", "id": 1}\n\n',
    "nan": b'data: {"jsonrpc": "2.0", "id": 1, "result": NaN}\n\n',
    "repeated-id": b'data: {"jsonrpc":"2.0","id":"intruder-7","id":1,"result":{}}\n\n',
    "truncated-at-the-end": b'data: {"jsonrpc": "2.0", "id": "intruder-7", "res',
}


@pytest.mark.parametrize("skill", ["plain", "answer"])
@pytest.mark.parametrize("bad", list(NOT_RESPONSES.values()), ids=list(NOT_RESPONSES))
def test_s12_1_an_event_that_is_not_a_json_rpc_response_ends_the_stream(
    start_jwt_sidecar, authority, tmp_path, bad, skill
):
    """Fail closed: such an event has no id that could be the caller's (a repeated key could
    be read as either id), so it is not passed on, nor anything after it."""
    events = line(reply(1, "before")) + bad + line(reply(1, "after"))
    if bad.endswith(b"res"):
        events = line(reply(1, "before")) + bad
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    # The stream ends at the bad event (the good one before it, read in the same piece, may
    # be held back with it: nothing is sent from a read before every event of it is read).
    assert [e["result"]["message"]["parts"][0]["text"] for e in caller_view(raw)] in (
        [],
        ["before"],
    )
    assert INTRUDER.encode() not in raw and b"after" not in raw
    assert record["outcome"]["code"] == "agent_bad_response"


@pytest.mark.parametrize("skill", ["plain", "answer"])
def test_s12_1_an_unended_last_event_is_re_keyed_too(start_jwt_sidecar, authority, tmp_path, skill):
    """The agent's stream ends inside a complete JSON-RPC event (no blank line): what the
    caller gets is under its id; unobligated it stays unended, as the agent wrote it."""
    events = line(reply(1, "a")) + b"data: " + json.dumps(reply(INTRUDER, "b")).encode()
    body = send("hi", skill, "SendStreamingMessage")
    raw, record = run_stream(start_jwt_sidecar, authority, tmp_path, events, body)
    assert INTRUDER.encode() not in raw
    last = raw.rstrip().rsplit(b"\n", 1)[-1]
    assert json.loads(last.removeprefix(b"data: "))["id"] == 1
    assert raw.endswith(b"\n\n") == (skill == "answer")
    assert record["outcome"]["code"] == "ok"


def test_s12_1_a_unary_answer_repeating_its_id_is_not_passed_on(
    start_jwt_sidecar, authority, tmp_path
):
    """The unary twin of "repeated-id": json.loads keeps the last id, a client's parser may
    keep the first, so the answer is refused rather than passed on (agent_bad_response)."""
    answer = b'{"jsonrpc":"2.0","id":"intruder-7","id":1,"result":{"message":{"parts":[]}}}'
    agent = ScriptedAgent(answer, "application/json")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        got = post(running, send("hi", "plain"), tls=client_tls(authority, tmp_path, PLANNER))
        assert INTRUDER not in got.text
        assert got.json()["error"]["data"]["code"] == "agent_bad_response"
        assert got.json()["id"] == 1
    finally:
        agent.stop()


# --- the unmodified a2a-sdk client --------------------------------------------------------


class _Tapped(httpx.AsyncByteStream):
    def __init__(self, inner: Any, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    async def __aiter__(self):
        async for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Tap(httpx.AsyncHTTPTransport):
    """The client's own transport, keeping each POST's body and every byte of an event
    stream it received."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[dict] = []
        self.received = bytearray()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.sent.append(json.loads(request.content))
        response = await super().handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = _Tapped(response.stream, self.received)
        return response


SDK_STREAM = b"".join(
    line(doc)
    for doc in (
        {
            "jsonrpc": "2.0",
            "id": INTRUDER,
            "result": {
                "task": {"id": "t-1", "contextId": "c-1", "status": {"state": "TASK_STATE_WORKING"}}
            },
        },
        {
            "id": None,
            "result": {
                "artifactUpdate": {
                    "taskId": "t-1",
                    "contextId": "c-1",
                    "artifact": {"artifactId": "a", "parts": [{"text": "answer"}]},
                }
            },
        },
        {
            "jsonrpc": "2.0",
            "result": {
                "statusUpdate": {
                    "taskId": "t-1",
                    "contextId": "c-1",
                    "status": {"state": "TASK_STATE_COMPLETED"},
                }
            },
        },
    )
)


@pytest.mark.parametrize("skill", ["plain", "answer"])
def test_s12_2_the_sdk_client_gets_its_own_id_on_every_event(
    start_jwt_sidecar, authority, tmp_path, skill
):
    """The official client, unmodified, against an agent answering under a forged id, a
    null one and none: it reads the whole stream, and every event on its wire is its id."""
    agent = ScriptedAgent(SDK_STREAM, "text/event-stream")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        tls = client_tls(authority, tmp_path, PLANNER)
        tap = Tap(verify=tls)

        async def ask() -> list[Any]:
            async with httpx.AsyncClient(transport=tap, timeout=30) as http:
                config = ClientConfig(streaming=True, httpx_client=http)
                client = await create_client(agent_card(running.url), client_config=config)
                message = Message(role=Role.ROLE_USER, message_id="m-1", parts=[Part(text="hi")])
                message.metadata.update({"skill": skill})
                request = SendMessageRequest(message=message)
                return [event async for event in client.send_message(request)]

        events = [MessageToDict(e) for e in asyncio.run(ask())]
        assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        # redact_response: the streamed artifact's held-back text comes as one more update
        assert len(events) == (3 if skill == "plain" else 4)
        [sent] = tap.sent
        seen = caller_view(bytes(tap.received))
        assert len(seen) == len(events) and all(e["id"] == sent["id"] for e in seen)
        assert INTRUDER.encode() not in tap.received
    finally:
        agent.stop()
