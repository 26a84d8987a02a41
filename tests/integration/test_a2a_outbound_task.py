"""Issue 34 deliverable 1 (with A3's provenance): an outbound A2A call the agent makes under
a sidecar task counts against that task and carries the task's transaction token
(``Txn-Token``) to the peer; the agent cannot send its own; an ended task refuses the call.
The peer is a real a2a-sdk server; the sidecar runs in identity mode jwt with the inbound side
on (its ProvenanceBinder mints the tokens)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_outbound import (
    AGENT,
    PEER_AUDIENCE,
    POLICY,
    Outbound,
    _send,
)
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy


@pytest.fixture
def peer():
    agent = PeerAgent()
    yield agent
    agent.stop()


@pytest.fixture
def outbound(start_jwt_sidecar, authority, peer, tmp_path) -> Outbound:
    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)},
        a2a={"listen": "127.0.0.1:0"},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": "http://127.0.0.1:9",  # never reached by these tests
            "agent_id": AGENT,
        },
        a2a_peers={
            "billing": {
                "url": peer.url,
                "spiffe_id": "spiffe://demo.example/agent/billing",
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 5,
            }
        },
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def _task(outbound: Outbound, authority) -> str:
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    with outbound.running.client(jwt_svid=lambda: token) as client:
        return client.start_task("settle the invoice").task_id


def _end(outbound: Outbound, authority, task_id: str) -> None:
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    with outbound.running.client(jwt_svid=lambda: token) as client:
        client.end_task(task_id)


def test_a2a_outbound_a_call_under_a_task_carries_its_txn_token_and_no_agent_header(
    outbound, peer, authority
):
    task_id = _task(outbound, authority)
    answer = outbound.post(
        _send("echo under a task"),
        **{"X-Agent-Sidecar-Task": task_id, "Txn-Token": "forged-by-the-agent"},
    )
    assert "result" in answer.json(), answer.text
    [seen] = peer.seen
    assert seen.headers.get("txn-token") and seen.headers["txn-token"] != "forged-by-the-agent"
    assert not any(h.startswith("x-agent-sidecar-") for h in seen.headers)
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"
    assert record["task"]["id"] == task_id
    # Outside a task there is no transaction to carry.
    outbound.post(_send("echo no task"))
    assert "txn-token" not in peer.seen[1].headers


def test_a2a_outbound_an_ended_task_refuses_the_call_before_the_peer(outbound, peer, authority):
    task_id = _task(outbound, authority)
    _end(outbound, authority, task_id)
    answer = outbound.post(_send("echo late"), **{"X-Agent-Sidecar-Task": task_id})
    assert answer.json()["error"]["data"]["code"] == "task_ended"
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "task_ended"
    assert json.dumps(record).count(task_id) >= 1


def test_a2a_outbound_a_task_of_another_agent_is_refused(outbound, peer, authority):
    response = httpx.post(
        outbound.url,
        json=_send("echo"),
        headers=outbound.headers(**{"X-Agent-Sidecar-Task": "task-that-is-not-mine"}),
        timeout=30,
    )
    assert response.json()["error"]["data"]["code"] == "task_unknown"
    assert peer.seen == []
