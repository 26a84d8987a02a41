"""Review s9 (issue 34: the gRPC CallPeer door and the HTTP+JSON binding), finding 1: a peer
that echoes the credential it was sent (its Authorization bearer, the task's Txn-Token) as a
REPEATED JSON key must not get it quoted into the strict reader's error, which would reach
the agent (gRPC status, loopback JSON-RPC error), the audit record and the logs.

Real parts: the sidecar in identity mode jwt with the inbound side on (its ProvenanceBinder
mints the Txn-Token of a task), a real aiohttp peer on loopback serving the test peer's card
and answering both bindings (JSON-RPC ``POST /``; REST ``/message:send``, ``/message:stream``
and ``/tasks/ID``), the agent's SidecarClient over gRPC and httpx to the loopback endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from sidecar.client import SidecarCallError, StepUpRequired
from tests.conftest import SIDECAR_AUDIENCE, audit_lines
from tests.integration.test_a2a_grpc import AGENT, PEER, POLICY, Door, _message
from tests.integration.test_a2a_rest_binding import outbound as outbound
from tests.integration.test_a2a_rest_binding import rest_peer as rest_peer
from tests.integration.test_a2a_rest_binding import rpc_peer as rpc_peer
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy

STATIC_BEARER = "s9-static-bearer-6f1c2a9d3e4b5f60718293a4b5c6d7e8"


class EchoPeer:
    """Answers every request with the secret its message names (``auth``: the Authorization
    bearer; ``txn``: the Txn-Token) as a repeated key, in the shape of the binding asked."""

    def __init__(self, card: dict[str, Any]) -> None:
        self.card = card
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.secrets: set[str] = set()
        self.kinds: set[str] = set()
        self._started = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._started.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/.well-known/agent-card.json", self._card)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _card(self, request: web.Request) -> web.Response:
        return web.json_response(self.card)

    def _secret(self, request: web.Request, text: str) -> str:
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ")
        txn = request.headers.get("Txn-Token", "")
        secret = txn if "txn" in text else auth
        assert secret, f"the peer was sent no {'Txn-Token' if 'txn' in text else 'credential'}"
        self.secrets.add(secret)
        self.kinds.add("txn" if "txn" in text else "auth")
        return secret

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append((request.method, request.path, dict(request.headers)))
        body = json.loads(raw) if raw else {}
        params = body.get("params", body)
        parts = (params.get("message") or {}).get("parts") or [{"text": request.path}]
        secret = self._secret(request, parts[0].get("text", ""))
        echo = f'{{"{secret}":1,"{secret}":2}}'
        if "ctype" in parts[0].get("text", ""):  # the secret as the answer's content type
            return web.Response(body=b"{}", headers={"Content-Type": secret})
        if body.get("method") == "GetExtendedAgentCard":  # the secret twice as a skill id
            skill = {"id": secret, "name": "s", "description": "d", "tags": []}
            card = self.card | {"skills": [skill, skill]}
            return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "result": card})
        if request.path == "/":  # JSON-RPC
            rpc_id = json.dumps(body.get("id"))
            text = f'{{"jsonrpc":"2.0","id":{rpc_id},"result":{echo}}}'
            return web.Response(text=text, content_type="application/json")
        if "error" in request.path:  # a REST google.rpc.Status error
            text = f'{{"error":{{"code":404,"message":"x","details":[{echo}]}}}}'
            return web.Response(status=404, text=text, content_type="application/json")
        if request.path.endswith(":stream"):  # a REST SSE event
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: " + echo.encode() + b"\n\n")
            return response
        return web.Response(text=echo, content_type="application/a2a+json")


def _card() -> dict[str, Any]:
    agent = PeerAgent()
    try:
        return httpx.get(agent.url + "/.well-known/agent-card.json", timeout=30).json()
    finally:
        agent.stop()


@pytest.fixture
def echo_peer() -> Iterator[EchoPeer]:
    peer = EchoPeer(_card())
    yield peer
    peer.stop()


@pytest.fixture
def door(start_jwt_sidecar, authority, echo_peer, tmp_path) -> Iterator[Door]:
    token = tmp_path / "static-bearer"
    token.write_text(STATIC_BEARER)
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": "http://127.0.0.1:9",  # never reached
            "agent_id": AGENT,
        },
        a2a_peers={
            "billing": PEER["billing"] | {"url": echo_peer.url},
            "ledger": PEER["billing"] | {"url": echo_peer.url, "binding": "http_json"},
            # a static bearer short enough to be a skill id (at most 128 characters)
            "static": PEER["billing"]
            | {"url": echo_peer.url, "credential": {"kind": "bearer", "token_file": str(token)}},
        },
    )
    opened = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    yield opened
    opened.client.close()
    opened.channel.close()


def _loopback(door: Door, peer: str, method: str, params: dict[str, Any], task: str) -> str:
    response = httpx.post(
        f"{door.running.sidecar.a2a_outbound.base_url}/peers/{peer}",
        json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params},
        headers={"Authorization": f"Bearer {door.token}", "X-Agent-Sidecar-Task": task},
        timeout=30,
    )
    return response.text


def _grpc(door: Door, peer: str, method: str, params: dict[str, Any], task: str) -> str:
    if method == "SendStreamingMessage":
        try:
            events = list(door.client.stream_peer(peer, method, params, task_id=task))
        except SidecarCallError as exc:
            return f"{exc.code} {exc}"
        return json.dumps([e.error for e in events if e.error])
    with pytest.raises(SidecarCallError) as refused:
        door.client.call_peer(peer, method, params, task_id=task)
    return f"{refused.value.code} {refused.value}"


CASES = [
    ("billing", "SendMessage", "auth"),  # JSON-RPC answer
    ("billing", "SendMessage", "txn"),
    ("ledger", "SendMessage", "auth"),  # REST answer
    ("ledger", "SendMessage", "txn"),
    ("ledger", "SendStreamingMessage", "auth"),  # REST SSE event
    ("ledger", "SendStreamingMessage", "txn"),
    ("ledger", "GetTask", "error"),  # REST error body (google.rpc.Status)
]


@pytest.mark.parametrize("through", ["grpc", "loopback"])
def test_review_s9_a2a_1_a_peer_echoing_its_credential_as_a_repeated_key_gets_nowhere(
    door, echo_peer, through, caplog
):
    caplog.set_level(logging.DEBUG)
    task = door.client.start_task("settle the invoice").task_id
    # "error": a task of this agent's at the peer (another agent's is refused first, s11 item 2)
    door.running.sidecar.a2a_outbound.peers["ledger"].tasks.record(AGENT, {"task:error"})
    answers = []
    for peer, method, secret in CASES:
        params = {"id": "error"} if method == "GetTask" else _message(f"echo {secret}", "lookup")
        send = _grpc if through == "grpc" else _loopback
        answers.append(send(door, peer, method, params, task))
    assert len(echo_peer.seen) == len(CASES)
    assert echo_peer.kinds == {"auth", "txn"}  # the bearer and the task's Txn-Token
    assert len(echo_peer.secrets) >= 2  # bearers and Txn-Tokens, each echoed
    records = audit_lines(Path(door.running.audit_path))
    calls = [r for r in records if r["rpc"].startswith("A2A ")]
    assert [r["outcome"]["code"] for r in calls] == ["peer_bad_response"] * len(CASES)
    assert all("repeats a key" in r["outcome"]["message"] for r in calls)
    assert all("repeats a key" in a for a in answers), answers
    logged = json.dumps([r.__dict__ for r in caplog.records], default=str)
    written = Path(door.running.audit_path).read_text()
    for secret in echo_peer.secrets:
        for where, text in (("answer", "\n".join(answers)), ("audit", written), ("log", logged)):
            assert secret not in text, f"the echoed secret reached the {where}"


def test_review_s9_a2a_1_any_failure_message_after_the_credential_is_scrubbed(
    door, echo_peer, caplog
):
    """Defence in depth: the extended card's checker quotes a skill id listed twice; a peer
    naming a skill after the bearer it was sent gets that message scrubbed, not relayed."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SidecarCallError) as refused:
        door.client.call_peer("static", "GetExtendedAgentCard", {})
    loopback = _loopback(door, "static", "GetExtendedAgentCard", {}, "")
    assert echo_peer.secrets == {STATIC_BEARER}
    assert "[REDACTED:credential]" in str(refused.value) and "twice" in str(refused.value)
    assert "[REDACTED:credential]" in loopback
    written = Path(door.running.audit_path).read_text()
    logged = "\n".join(caplog.messages)
    for secret in echo_peer.secrets:
        assert secret not in str(refused.value) + loopback + written + logged


def test_review_s9_a2a_1_the_answers_content_type_is_not_quoted(door, echo_peer):
    """A peer labelling its answer with the bearer it was sent (lower-cased by the reader,
    so no scrubber would know it): the message names no content type."""
    answer = _grpc(door, "billing", "SendMessage", _message("echo ctype", "lookup"), "")
    loopback = _loopback(door, "billing", "SendMessage", _message("echo ctype", "lookup"), "")
    written = Path(door.running.audit_path).read_text()
    for secret in echo_peer.secrets:
        for text in (answer, loopback, written):
            assert secret.lower()[:40] not in text.lower()
    assert "peer_bad_response" in answer


@pytest.fixture
def sdk_door(start_jwt_sidecar, authority, tmp_path) -> Iterator[tuple[Door, PeerAgent]]:
    peer = PeerAgent()
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={"billing": PEER["billing"] | {"url": peer.url}},
    )
    opened = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    yield opened, peer
    opened.client.close()
    opened.channel.close()
    peer.stop()


def test_review_s9_a2a_7_an_approval_is_bound_to_the_method(sdk_door):
    """An approval of SendMessage does not redeem SendStreamingMessage with the same params
    (nor the reverse); the approved method still goes, once."""
    door, peer = sdk_door
    params = _message("echo refund A-7", "refund")
    with pytest.raises(StepUpRequired) as stepped:
        door.client.call_peer("billing", "SendMessage", params, wait=False)
    approval_id = stepped.value.approval_id
    with door.running.approvals() as approvals:
        approvals.approve(approval_id, reason="refund ok")
    with pytest.raises(SidecarCallError) as other:
        list(
            door.client.stream_peer(
                "billing", "SendStreamingMessage", params, approval_id=approval_id
            )
        )
    assert other.value.code == "approval_mismatch", other.value.code
    assert peer.seen == []
    answer = door.client.call_peer("billing", "SendMessage", params, approval_id=approval_id)
    assert answer.result["message"]["parts"][0]["text"] == "peer heard: echo refund A-7"
    assert [s.body["method"] for s in peer.seen] == ["SendMessage"]


@pytest.mark.parametrize("interfaces", [["GRPC"], []])
def test_review_s9_a2a_4_a_card_offering_neither_binding_is_refused_and_audited(
    start_jwt_sidecar, authority, tmp_path, interfaces
):
    card = _card()
    url = card["supportedInterfaces"][0]["url"]
    card["supportedInterfaces"] = [
        {"url": url, "protocolBinding": b, "protocolVersion": "1.0"} for b in interfaces
    ]
    peer = EchoPeer(card)
    try:
        running = start_jwt_sidecar(
            policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
            a2a={"listen": "127.0.0.1:0"},
            a2a_peers={"billing": PEER["billing"] | {"url": peer.url}},
        )
        door = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
        answer = _grpc(door, "billing", "SendMessage", _message("echo hi", "lookup"), "")
        loopback = json.loads(_loopback(door, "billing", "SendMessage", _message("echo"), ""))
        door.client.close()
        door.channel.close()
    finally:
        peer.stop()
    assert answer.startswith("binding_unsupported"), answer
    assert loopback["error"]["data"]["code"] == "binding_unsupported"
    assert peer.seen == []  # nothing sent
    records = audit_lines(Path(running.audit_path))
    assert [r["outcome"]["code"] for r in records] == ["binding_unsupported"] * 2
    assert not any(r["outcome"]["relayed"] for r in records)


ROUTE_WORD_TENANTS = ["tasks", "extendedAgentCard", "v1", "message", "card", "Tasks"]


def test_review_s9_a2a_5_a_route_word_tenant_reaches_no_route_of_a_real_rest_peer(
    outbound, rest_peer
):
    """Against the a2a-sdk's own REST server: each would have reached another route (GetTask
    of task "tasks", the 0.3 routes under /v1); each is refused and audited, nothing sent."""
    bodies = [
        {"jsonrpc": "2.0", "id": i, "method": method, "params": params | {"tenant": tenant}}
        for i, tenant in enumerate(ROUTE_WORD_TENANTS)
        for method, params in (
            ("ListTasks", {}),
            ("GetExtendedAgentCard", {}),
            ("GetTask", {"id": "t-1"}),
            ("SendMessage", _message("echo hi", "lookup")),
        )
    ]
    for body in bodies:
        answer = outbound.post(body).json()
        assert answer["error"]["data"]["code"] == "malformed_request", body
    assert rest_peer.seen == []
    records = outbound.records()
    assert [r["outcome"]["code"] for r in records] == ["malformed_request"] * len(bodies)
    assert not any(r["outcome"]["relayed"] for r in records)
