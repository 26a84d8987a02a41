"""Issue 34 item 1 (with A3's provenance), through the gRPC API: a CallPeer under a sidecar
task counts against it and carries the task's transaction token to the peer, the same token
the loopback endpoint sends for that task; an ended task, another agent's task and a forged
delegation chain are refused before the peer, each one audit record. Real a2a-sdk peer,
identity mode jwt with the inbound side on (its ProvenanceBinder mints the tokens)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from sidecar.client import PolicyDenied, SidecarCallError
from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_grpc import AGENT, PEER, POLICY, Door, _message
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


@pytest.fixture
def door(start_jwt_sidecar, authority, peer, tmp_path) -> Iterator[Door]:
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": "http://127.0.0.1:9",  # never reached by these tests
            "agent_id": AGENT,
        },
        a2a_peers={"billing": PEER["billing"] | {"url": peer.url}},
    )
    opened = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    yield opened
    opened.client.close()
    opened.channel.close()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_item1_grpc_under_a_task_carries_the_same_txn_token_as_the_http_door(door, peer):
    task_id = door.client.start_task("settle the invoice").task_id
    params = _message("echo under a task", "lookup")
    answer = door.client.call_peer("billing", "SendMessage", params, task_id=task_id)
    assert answer.result["message"]["parts"][0]["text"] == "peer heard: echo under a task"
    # The loopback endpoint, for the same task.
    http = httpx.post(
        f"{door.running.sidecar.a2a_outbound.base_url}/peers/billing",
        json={"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": params},
        headers={"Authorization": f"Bearer {door.token}", "X-Agent-Sidecar-Task": task_id},
        timeout=30,
    )
    assert "result" in http.json()
    door.client.call_peer("billing", "SendMessage", params)  # outside the task
    via_grpc, via_http, outside = peer.seen
    assert "txn-token" not in outside.headers  # outside a task there is no transaction
    assert not any(h.startswith("x-agent-sidecar-") for h in via_grpc.headers)
    grpc_claims = _claims(via_grpc.headers["txn-token"])
    http_claims = _claims(via_http.headers["txn-token"])
    for claim in ("txn", "sub", "purp", "azd", "aud"):
        assert grpc_claims[claim] == http_claims[claim], claim
    records = door.records()
    assert [r["task"]["id"] for r in records[:2]] == [task_id, task_id]
    assert [r["outcome"]["code"] for r in records] == ["ok"] * 3
    assert via_grpc.headers["txn-token"] not in json.dumps(records)  # never on record


def test_item1_grpc_an_ended_task_refuses_the_call_before_the_peer(door, peer):
    task_id = door.client.start_task("short").task_id
    door.client.end_task(task_id)
    with pytest.raises(PolicyDenied) as ended:
        door.client.call_peer("billing", "SendMessage", _message("echo late"), task_id=task_id)
    assert ended.value.code == "task_ended"
    with pytest.raises(PolicyDenied) as foreign:
        door.client.call_peer("billing", "GetTask", {"id": "t"}, task_id="not-my-task")
    assert foreign.value.code == "task_unknown"
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in door.records()] == ["task_ended", "task_unknown"]


def test_item1_grpc_a_forged_delegation_chain_is_refused_and_audited(door, peer):
    for chain in (["not-a-jwt"], ["a.b.c"], ["x" * 10000]):
        with pytest.raises(SidecarCallError) as refused:
            door.client.call_peer(
                "billing", "SendMessage", _message("echo", "lookup"), delegation_chain=chain
            )
        assert refused.value.status == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.code == "delegation_invalid"
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in door.records()] == ["delegation_invalid"] * 3
