"""Review s12 (A2A ownership) findings F1 and F6 end to end (docs/a2a.md "A peer's tasks
belong to the local agent that made them"): authorize -> claim -> send, and contexts owned
under their folded key, at both doors.

Real parts, as test_s12_a2a_ownership.py: the official a2a-sdk peer, the sidecar in identity
mode jwt, two local agents (support, planner) with their own JWT-SVIDs over the loopback A2A
endpoint (HTTP) and the gRPC API (CallPeer, StreamPeer). Store-level guarantees on SQLite and
PostgreSQL: test_s12_a2a_ownership_findings_store.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.client import SidecarCallError
from tests.integration import test_s12_a2a_ownership as _ownership
from tests.integration.test_review_s11_a2a_outbound import (
    Agents,
    _message,
    _refused_as_not_owned,
    _rpc,
    _working_task,
)
from tests.integration.test_s12_a2a_ownership import _config, _contexts_seen, _rows
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy

peer = _ownership.peer  # the fixture
SUPPORT = "spiffe://demo.example/agent/support"

# support may call the peer; planner is granted nothing there. A message with metadata key
# "deny" is refused, one naming context "held-ctx" needs a human (step_up).
POLICY = f"""package agentsidecar.authz

import rego.v1

default decision := {{"effect": "deny", "reasons": ["not granted"]}}

decision := {{"effect": "allow", "obligations": {{"log": "full"}}}} if {{
    input.action.kind == "a2a"
    input.subject.spiffe_id == "{SUPPORT}"
    keys := input.action.arguments.metadata_keys
    not "deny" in keys
    input.action.arguments.context_id != "held-ctx"
}}

decision := {{"effect": "step_up", "reasons": ["a human decides"]}} if {{
    input.action.kind == "a2a"
    input.action.arguments.context_id == "held-ctx"
}}
"""


@pytest.fixture
def agents(start_jwt_sidecar, authority, peer, tmp_path) -> Any:
    config = _config(peer, tmp_path)
    config["policy"] = {"dir": str(write_policy(tmp_path / "f1", POLICY))}
    opened = Agents(start_jwt_sidecar(**config), authority)
    yield opened
    opened.close()


def _code(answer: Any) -> str:
    return answer.json()["error"]["data"]["code"]


def _grpc_code(agents: Agents, who: str, context: str, *, stream: bool = False) -> str:
    params = _message(f"echo {who}", contextId=context)
    with pytest.raises(SidecarCallError) as info:
        if stream:
            list(agents.grpc[who].stream_peer("billing", "SendStreamingMessage", params))
        else:
            agents.grpc[who].call_peer("billing", "SendMessage", params)
    return info.value.code


def test_f1_an_agent_with_no_grant_cannot_block_a_granted_agent_at_either_door(agents, peer):
    planner, support = agents.planner, agents.support
    squatted = ["support-2026-12-05", "support-2026-12-06", "ticket-1001", "ticket-1002"]
    for context in squatted[:2]:  # the loopback door, unary and streamed
        assert _code(planner.post(_rpc("SendMessage", _message("x", contextId=context)))) == (
            "policy_deny"
        )
        streamed = _rpc("SendStreamingMessage", _message("x", contextId=context))
        assert _code(planner.post(streamed)) == "policy_deny"
    assert _grpc_code(agents, "planner", squatted[2]) == "policy_deny"  # the gRPC door
    assert _grpc_code(agents, "planner", squatted[3], stream=True) == "policy_deny"
    assert _rows(agents) == [] and peer.seen == []  # nothing claimed, nothing sent
    # the granted agent starts each of them, at either door
    for context in squatted[:2]:
        sent = support.post(_rpc("SendMessage", _message("echo s", contextId=context))).json()
        assert "result" in sent, sent
    made = agents.grpc["support"].call_peer(
        "billing", "SendMessage", _message("echo g", contextId=squatted[2])
    )
    assert made.result["message"]["parts"][0]["text"].startswith("peer heard")
    events = list(
        agents.grpc["support"].stream_peer(
            "billing", "SendStreamingMessage", _message("echo st", contextId=squatted[3])
        )
    )
    assert events
    assert {row["task_id"]: row["caller"] for row in _rows(agents)} == {
        "context:" + c: SUPPORT for c in squatted
    }
    assert sorted(c for c, _ in _contexts_seen(peer)) == sorted(squatted)
    # and the agent with no grant is now refused as not owning them, before policy
    _refused_as_not_owned(planner.post(_rpc("SendMessage", _message("x", contextId=squatted[0]))))


def test_f1_a_send_held_for_approval_claims_nothing(agents, peer):
    held = agents.planner.post(_rpc("SendMessage", _message("echo h", contextId="held-ctx")))
    assert _code(held) == "step_up_required" and held.json()["error"]["data"]["approval_id"]
    assert _grpc_code(agents, "support", "held-ctx") == "approval_required"
    assert _code(agents.support.post(_rpc("SendMessage", _message("h", contextId="held-ctx")))) == (
        "step_up_required"
    )
    assert _rows(agents, "context:held-ctx") == [] and peer.seen == []


def test_f1_a_refused_request_does_not_mark_the_owners_rows_used(agents, peer):
    task = _working_task(agents.support)
    keys = ("task:" + task["id"], "context:" + task["contextId"])
    state = agents.running.sidecar.state
    with state.transaction() as conn:  # long unused
        conn.execute("UPDATE a2a_task_owners SET used_ns = 5")
    seen = len(peer.seen)
    denied = _message(
        "echo d", taskId=task["id"], contextId=task["contextId"], metadata={"deny": 1}
    )
    assert _code(agents.support.post(_rpc("SendMessage", denied))) == "policy_deny"
    # refused before policy (another agent's): no use recorded either
    other = _message("echo o", contextId=task["contextId"])
    _refused_as_not_owned(agents.planner.post(_rpc("SendMessage", other)))
    assert [_rows(agents, key)[0]["used_ns"] for key in keys] == [5, 5]
    assert len(peer.seen) == seen
    allowed = _message("echo a", contextId=task["contextId"])
    assert "result" in agents.support.post(_rpc("SendMessage", allowed)).json()
    assert _rows(agents, keys[1])[0]["used_ns"] > 5  # allowed: marked used


def test_f6_variants_of_a_context_are_one_context_at_both_doors(agents, peer):
    support = agents.support
    assert (
        "result"
        in support.post(_rpc("SendMessage", _message("echo a", contextId="Session-42"))).json()
    )
    variants = [
        "session-42",
        "SESSION-42",
        "Session-42 ",
        " Session-42",
        "\uff33ession-42",
        "Session-42\u200b",
        "Session\u201142",
        "Session-42\n",
    ]
    seen = len(peer.seen)
    for variant in variants:
        _refused_as_not_owned(
            agents.planner.post(_rpc("SendMessage", _message("echo p", contextId=variant)))
        )
        _refused_as_not_owned(agents.planner.post(_rpc("ListTasks", {"contextId": variant})))
    assert _grpc_code(agents, "planner", "SESSION-42") == "task_not_owned"
    assert _grpc_code(agents, "planner", "Session\u201142", stream=True) == "task_not_owned"
    assert len(peer.seen) == seen
    # the owner's own variants are its own, and reach the peer exactly as it wrote them
    for variant in ("SESSION-42", "Session-42\u200b"):
        sent = support.post(_rpc("SendMessage", _message("echo " + variant, contextId=variant)))
        assert "result" in sent.json()
    assert [c for c, _ in _contexts_seen(peer)][-2:] == ["SESSION-42", "Session-42\u200b"]
    assert [row["task_id"] for row in _rows(agents)] == ["context:session-42"]


def test_f6_a_context_the_peer_made_is_owned_under_its_folded_key(agents, peer):
    task = _working_task(agents.support)
    shouted = task["contextId"].upper()
    assert shouted != task["contextId"]  # the SDK peer's ids are lowercase UUIDs
    _refused_as_not_owned(
        agents.planner.post(_rpc("SendMessage", _message("echo p", contextId=shouted + " ")))
    )


def test_f6_the_unaltered_id_goes_to_the_peer(agents: Agents, peer: PeerAgent) -> None:
    odd = "\uff33ession-\u00e9 42\u200b"
    sent = agents.support.post(_rpc("SendMessage", _message("echo odd", contextId=odd)))
    assert "result" in sent.json()
    assert _contexts_seen(peer) == [(odd, "m-echo odd")]
