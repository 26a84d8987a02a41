"""Session 12 h3, item 1 outbound and item 4: a peer's answer reaches the local agent under
the agent's own JSON-RPC id, unary and every streamed event, obligation or not (the same
rule as the inbound listener's, tests/integration/test_s12_a2a_answer_ids.py), and the gRPC
``CallPeer`` answer's ``result_json`` is the answer as the guarded call encoded it, not a
second encoding. Real sidecar (identity mode jwt), a hostile peer on a real socket, the
unmodified a2a-sdk client and the real gRPC API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest
from aiohttp import web
from google.protobuf.json_format import MessageToDict

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.a2a import grpc_calls
from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_grpc import AGENT, PEER
from tests.integration.test_a2a_outbound import Outbound
from tests.integration.test_s12_a2a_answer_ids import (
    _MISSING,
    IDS,
    INTRUDER,
    SDK_STREAM,
    Tap,
    caller_view,
    line,
    reply,
)
from tests.support.a2a_inbound_agent import card_dict
from tests.support.policies import write_policy

# Every a2a call allowed; skill "lookup" adds redact_response, no skill none at all.
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

_obligations := {"lookup": {"log": "full", "redact_response": ["email"]}}

decision := {"effect": "allow", "obligations": obligations} if {
	input.action.kind == "a2a"
	not input.action.card.changed
	obligations := object.get(_obligations, input.action.skill, {"log": "full"})
}
"""

Answer = Callable[[Any], tuple[bytes, str]]  # the request's id -> (body, content type)


class ScriptedPeer:
    """A hostile peer on a real socket: serves a card, answers each POST with ``answer``
    of the request's id, and keeps each request body."""

    def __init__(self) -> None:
        self.answer: Answer = lambda _id: (b"{}", "application/json")
        self.bodies: list[dict] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/.well-known/agent-card.json", self._card)
        app.router.add_post("/", self._post)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _card(self, request: web.Request) -> web.Response:
        return web.json_response(card_dict(self.url))

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.bodies.append(body)
        data, kind = self.answer(body["id"])
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)


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


def send(rpc_id: Any, method: str, skill: str) -> dict:
    message: dict[str, Any] = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
    if skill:
        message["metadata"] = {"skill": skill}
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": {"message": message}}


def stream_raw(outbound: Outbound, body: dict) -> bytes:
    received = bytearray()
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", outbound.url, json=body, headers=outbound.headers()) as s,
    ):
        assert s.headers["content-type"].startswith("text/event-stream")
        for piece in s.iter_bytes():
            received += piece
    return bytes(received)


@pytest.mark.parametrize("skill", ["", "lookup"])
@pytest.mark.parametrize(("caller_id", "peer_id"), list(IDS.values()), ids=list(IDS))
def test_s12_1_outbound_every_streamed_event_reaches_the_agent_under_its_id(
    outbound, peer, skill, caller_id, peer_id
):
    def answer(sent_id: Any) -> tuple[bytes, str]:
        ids = [sent_id, peer_id, peer_id]
        events = b"".join(line(reply(i, f"n{n}")) for n, i in enumerate(ids))
        return b": ping\n\n" + events, "text/event-stream"

    peer.answer = answer
    raw = stream_raw(outbound, send(caller_id, "SendStreamingMessage", skill))
    seen = caller_view(raw)
    assert [e["id"] for e in seen] == [caller_id] * 3
    assert all(type(e["id"]) is type(caller_id) and e["jsonrpc"] == "2.0" for e in seen)
    assert [e["result"]["message"]["parts"][0]["text"] for e in seen] == ["n0", "n1", "n2"]
    assert INTRUDER.encode() not in raw
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"


@pytest.mark.parametrize("skill", ["", "lookup"])
@pytest.mark.parametrize(("caller_id", "peer_id"), list(IDS.values()), ids=list(IDS))
def test_s12_1_outbound_a_unary_answer_reaches_the_agent_under_its_id(
    outbound, peer, skill, caller_id, peer_id
):
    peer.answer = lambda _id: (json.dumps(reply(peer_id, "one")).encode(), "application/json")
    answer = outbound.post(send(caller_id, "SendMessage", skill))
    doc = answer.json()
    assert doc["id"] == caller_id and type(doc["id"]) is type(caller_id)
    assert doc["result"]["message"]["parts"][0]["text"] == "one"
    assert INTRUDER not in answer.text


@pytest.mark.parametrize("skill", ["", "lookup"])
@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"jsonrpc": "2.0", "id": 7}\n\n',  # neither result nor error
        b'data: {"jsonrpc":"2.0","id":"intruder-7","id":7,"result":{}}\n\n',  # repeated id
        b"data: [7]\n\n",
    ],
    ids=["no-result", "repeated-id", "a-list"],
)
def test_s12_1_outbound_an_event_that_is_not_a_json_rpc_response_ends_the_stream(
    outbound, peer, skill, bad
):
    """The inbound rule, outbound: the stream ends with the sidecar's error event under the
    agent's id (peer_bad_response); nothing of the bad event reaches the agent."""
    peer.answer = lambda sent_id: (line(reply(sent_id, "before")) + bad, "text/event-stream")
    raw = stream_raw(outbound, send(7, "SendStreamingMessage", skill))
    seen = caller_view(raw)
    assert [e["id"] for e in seen] == [7, 7]
    assert seen[-1]["error"]["data"]["code"] == "peer_bad_response"
    assert INTRUDER.encode() not in raw
    [record] = outbound.records()
    assert record["outcome"]["code"] == "peer_bad_response"


def test_s12_2_outbound_the_sdk_client_gets_its_own_id_on_every_event(outbound, peer):
    peer.answer = lambda _id: (SDK_STREAM, "text/event-stream")
    tap = Tap()

    async def ask() -> list[Any]:
        async with httpx.AsyncClient(transport=tap, headers=outbound.headers(), timeout=30) as http:
            config = ClientConfig(streaming=True, httpx_client=http)
            client = await create_client(outbound.url, client_config=config)
            message = Message(role=Role.ROLE_USER, message_id="m-1", parts=[Part(text="hi")])
            return [e async for e in client.send_message(SendMessageRequest(message=message))]

    events = [MessageToDict(e) for e in asyncio.run(ask())]
    assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    [sent] = tap.sent  # the card was fetched first (a GET)
    seen = caller_view(bytes(tap.received))
    # The streamed artifact's held-back text (the credential scrubber's) is one more update.
    assert len(seen) == len(events) == 4 and all(e["id"] == sent["id"] for e in seen)
    assert INTRUDER.encode() not in tap.received


# --- item 4: CallPeer's result_json is the answer encoded once --------------------------

HOSTILE_RESULT = {
    "message": {
        "messageId": "x",
        "role": "ROLE_AGENT",
        "parts": [{"text": 'ünïcode \u2028 "result":{} }'}, {"data": {"n": 2**64 + 1, "f": 0.1}}],
        "metadata": {"id": "not-the-id", "jsonrpc": "1.0", "blob": "z" * 50_000},
    }
}


@pytest.mark.parametrize("peer_id", [INTRUDER, None, _MISSING], ids=["forged", "null", "missing"])
def test_s12_4_call_peer_result_json_is_the_answer_encoded_once(
    outbound, peer, monkeypatch, peer_id
):
    encoded: list[int] = []
    dumps = grpc_calls._dumps

    def counting(value: Any) -> str:
        text = dumps(value)
        encoded.append(len(text))
        return text

    monkeypatch.setattr(grpc_calls, "_dumps", counting)
    doc = reply(peer_id, "x") | {"result": HOSTILE_RESULT}
    peer.answer = lambda _id: (json.dumps(doc).encode(), "application/json")
    with grpc.insecure_channel(outbound.running.address) as channel:
        answer = sidecar_pb2_grpc.SidecarStub(channel).CallPeer(
            sidecar_pb2.CallPeerRequest(
                peer="billing",
                operation="SendMessage",
                params_json=json.dumps(send(1, "SendMessage", "")["params"]),
            ),
            metadata=[("authorization", f"Bearer {outbound.token}")],
            timeout=30,
        )
    assert answer.decision.effect == "allow" and not answer.error_json
    assert answer.result_json == json.dumps(
        HOSTILE_RESULT, separators=(",", ":"), ensure_ascii=False
    )
    assert json.loads(answer.result_json) == HOSTILE_RESULT
    # The request's envelope and the answer's head are encoded here; the 50 KB result is not.
    assert sum(encoded) < 1024, encoded
