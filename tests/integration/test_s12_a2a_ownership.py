"""Session 12, helper 1: a peer's contexts are claimed before anything is sent, and the
ownership rows are pruned (docs/a2a.md "A peer's tasks belong to the local agent that made
them").

Real parts, as test_review_s11_a2a_outbound.py: the official a2a-sdk peer, the sidecar in
identity mode jwt, two local agents (support, planner) with their own JWT-SVIDs over the
loopback A2A endpoint (HTTP) and the gRPC API (CallPeer), the sidecar's own sweep pruning
its default state store. The store-level guarantees on SQLite and PostgreSQL:
test_s12_a2a_ownership_store.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from sidecar.client import SidecarCallError
from sidecar.config import ConfigError, parse_settings
from tests.integration.test_a2a_outbound import PEER_AUDIENCE
from tests.integration.test_review_s11_a2a_outbound import (
    POLICY,
    Agents,
    _message,
    _refused_as_not_owned,
    _rpc,
    _working_task,
)
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy
from tests.support.settle import poll

ROUNDS = 12


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


def _config(peer: PeerAgent, tmp_path: Any, **billing: Any) -> dict[str, Any]:
    return {
        "policy": {"dir": str(write_policy(tmp_path / "policy", POLICY))},
        "a2a": {"listen": "127.0.0.1:0"},
        "a2a_peers": {
            "billing": {
                "url": peer.url,
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 3,
            }
            | billing
        },
    }


@pytest.fixture
def agents(start_jwt_sidecar, authority, peer, tmp_path) -> Iterator[Agents]:
    opened = Agents(start_jwt_sidecar(**_config(peer, tmp_path)), authority)
    yield opened
    opened.close()


def _contexts_seen(peer: PeerAgent) -> list[tuple[str, str]]:
    """(contextId, messageId) of every message that reached the peer."""
    found = []
    for seen in peer.seen:
        message = seen.body.get("params", {}).get("message", {})
        if "contextId" in message:
            found.append((message["contextId"], message["messageId"]))
    return found


def _rows(agents: Agents, key: str = "") -> list[dict[str, Any]]:
    state = agents.running.sidecar.state
    sql = "SELECT agent, task_id, caller, used_ns FROM a2a_task_owners"
    rows = state.query(sql + (" WHERE task_id = ?" if key else ""), (key,) if key else ())
    return [dict(r) for r in rows]


# --- item 1: an invented contextId is claimed before the message is sent --------------------


def test_item1_a_claim_is_made_before_sending_and_kept_when_the_send_fails(agents, peer):
    support, planner = agents.support, agents.planner
    assert "result" in support.post(_rpc("SendMessage", _message("echo warm"))).json()  # card
    peer.stop()  # every send from now on fails at the peer
    failed = support.post(_rpc("SendMessage", _message("echo s", contextId="guessable-1")))
    assert failed.json()["error"]["data"]["code"] in ("peer_unavailable", "peer_timeout")
    # support's claim was made before its send and kept (fail closed): planner, guessing the
    # same id, is refused before any connection, not told the peer is unavailable.
    _refused_as_not_owned(
        planner.post(_rpc("SendMessage", _message("echo p", contextId="guessable-1")))
    )
    with pytest.raises(SidecarCallError) as info:
        agents.grpc["planner"].call_peer(
            "billing", "SendMessage", _message("echo g", contextId="guessable-1")
        )
    assert info.value.code == "task_not_owned" and info.value.status == grpc.StatusCode.NOT_FOUND
    [row] = _rows(agents, "context:guessable-1")
    assert row["caller"].endswith("/support") and row["agent"] == "a2a-peer:billing"
    last = support.records()[-2:]
    assert [r["outcome"]["code"] for r in last] == ["task_not_owned"] * 2
    assert not any(r["outcome"]["relayed"] for r in last)


DENY_ONE_CONTEXT = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow", "obligations": {"log": "full"}} if {
    input.action.kind == "a2a"
    input.action.arguments.context_id != "denied-ctx"
}
"""


def test_item1_f1_a_send_policy_denies_claims_nothing(start_jwt_sidecar, authority, peer, tmp_path):
    config = _config(peer, tmp_path)
    config["policy"] = {"dir": str(write_policy(tmp_path / "deny", DENY_ONE_CONTEXT))}
    agents = Agents(start_jwt_sidecar(**config), authority)
    try:
        body = _rpc("SendMessage", _message("echo p", contextId="denied-ctx"))
        denied = agents.planner.post(body).json()["error"]["data"]["code"]
        assert denied == "policy_deny"  # authorize -> claim -> send: refused, so no claim
        assert _rows(agents, "context:denied-ctx") == [] and peer.seen == []
        # nobody owns it: the next sender is refused by policy too, not as "not owned"
        assert agents.support.post(body).json()["error"]["data"]["code"] == "policy_deny"
        assert _rows(agents) == []
    finally:
        agents.close()


def test_item1_a_claim_through_grpc_binds_the_loopback_door_and_back(agents, peer):
    made = agents.grpc["planner"].call_peer(
        "billing", "SendMessage", _message("echo one", contextId="door-ctx")
    )
    assert made.result["message"]["parts"][0]["text"].startswith("peer heard")
    _refused_as_not_owned(
        agents.support.post(_rpc("SendMessage", _message("echo two", contextId="door-ctx")))
    )
    again = agents.planner.post(_rpc("SendMessage", _message("echo three", contextId="door-ctx")))
    assert "result" in again.json()
    with pytest.raises(SidecarCallError) as info:
        list(
            agents.grpc["support"].stream_peer(
                "billing", "SendStreamingMessage", _message("stream", contextId="door-ctx")
            )
        )
    assert info.value.code == "task_not_owned"
    assert [c for c, _ in _contexts_seen(peer)] == ["door-ctx", "door-ctx"]


def test_item1_two_agents_racing_for_a_new_context_one_wins_and_only_it_is_sent(agents, peer):
    support, planner = agents.support, agents.planner

    async def loopback(out: Any, context: str, who: str) -> tuple[str, str]:
        body = _rpc("SendMessage", _message(f"echo {who}-{context}", contextId=context))
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(
                out.url,
                content=json.dumps(body).encode(),
                headers=out.headers(**{"Content-Type": "application/json"}),
            )
        doc = answer.json()
        return who, "ok" if "result" in doc else doc["error"]["data"]["code"]

    async def through_grpc(who: str, context: str) -> tuple[str, str]:
        params = _message(f"echo {who}-{context}", contextId=context)
        try:
            await asyncio.to_thread(agents.grpc[who].call_peer, "billing", "SendMessage", params)
        except SidecarCallError as exc:
            return who, exc.code
        return who, "ok"

    async def rounds() -> list[list[tuple[str, str]]]:
        results = []
        for i in range(ROUNDS):
            context = f"race-{i}"
            if i % 3 == 0:  # both at the loopback endpoint
                racers = [
                    loopback(support, context, "support"),
                    loopback(planner, context, "planner"),
                ]
            elif i % 3 == 1:  # both over gRPC
                racers = [through_grpc("support", context), through_grpc("planner", context)]
            else:  # one at each door
                racers = [loopback(support, context, "support"), through_grpc("planner", context)]
            results.append(list(await asyncio.gather(*racers)))
        return results

    outcomes = asyncio.run(rounds())
    seen = _contexts_seen(peer)
    for i, pair in enumerate(outcomes):
        codes = sorted(code for _, code in pair)
        assert codes == ["ok", "task_not_owned"], (i, pair)
        [winner] = [who for who, code in pair if code == "ok"]
        # the peer heard the winner's message in that context, never the loser's
        assert [m for c, m in seen if c == f"race-{i}"] == [f"m-echo {winner}-race-{i}"]
        [row] = _rows(agents, f"context:race-{i}")
        assert row["caller"].endswith("/" + winner)
    records = support.records()
    refused = [r for r in records if r["outcome"]["code"] == "task_not_owned"]
    assert len(refused) == ROUNDS and not any(r["outcome"]["relayed"] for r in refused)


def test_item1_listing_an_unowned_context_reads_it_and_claims_nothing(agents, peer):
    listed = agents.planner.post(_rpc("ListTasks", {"contextId": "nobodys-ctx"})).json()
    assert listed["result"]["tasks"] == []
    assert _rows(agents, "context:nobodys-ctx") == []  # a read took no name
    sent = agents.support.post(_rpc("SendMessage", _message("echo s", contextId="nobodys-ctx")))
    assert "result" in sent.json()  # still free for the agent that really starts it
    _refused_as_not_owned(agents.planner.post(_rpc("ListTasks", {"contextId": "nobodys-ctx"})))


def test_item1_a_request_refused_for_a_task_claims_no_context(agents, peer):
    task = _working_task(agents.support)
    body = _message("echo x", taskId=task["id"], contextId="would-be-claimed")
    _refused_as_not_owned(agents.planner.post(_rpc("SendMessage", body)))
    assert _rows(agents, "context:would-be-claimed") == []


def test_item1_a_hostile_context_id_is_refused_and_claims_nothing(agents, peer):
    before = len(_rows(agents))
    for hostile in ("x" * 257, 7, ["ctx"], {"id": "ctx"}, True):
        body = _rpc("SendMessage", _message("echo h", contextId=hostile))
        error = agents.planner.post(body).json()["error"]
        assert error["data"]["code"] in ("invalid_params", "malformed_request"), hostile
    assert peer.seen == [] and len(_rows(agents)) == before
    # an empty contextId names none: nothing claimed, the peer makes its own
    answer = agents.planner.post(_rpc("SendMessage", _message("echo e", contextId=""))).json()
    assert "result" in answer and _rows(agents, "context:") == []


def test_item1_one_agent_cannot_claim_past_its_bound_at_a_peer(
    start_jwt_sidecar, authority, peer, tmp_path
):
    running = start_jwt_sidecar(**_config(peer, tmp_path, max_owned_per_agent=3))
    agents = Agents(running, authority)
    try:
        planner, support = agents.planner, agents.support
        for i in range(3):
            made = planner.post(_rpc("SendMessage", _message("echo c", contextId=f"cap-{i}")))
            assert "result" in made.json()
        seen = len(peer.seen)
        over = planner.post(_rpc("SendMessage", _message("echo c", contextId="cap-3"))).json()
        assert over["error"]["code"] == -32015
        assert over["error"]["data"]["code"] == "task_ownership_limit"
        assert "max_owned_per_agent" in over["error"]["message"]
        with pytest.raises(SidecarCallError) as info:
            agents.grpc["planner"].call_peer(
                "billing", "SendMessage", _message("echo c", contextId="cap-4")
            )
        assert info.value.code == "task_ownership_limit"
        assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(peer.seen) == seen and _rows(agents, "context:cap-3") == []
        # its own contexts, and messages naming none, still go; another agent is not bound by it
        assert (
            "result"
            in planner.post(_rpc("SendMessage", _message("echo", contextId="cap-0"))).json()
        )
        assert "result" in planner.post(_rpc("SendMessage", _message("echo none"))).json()
        assert (
            "result" in support.post(_rpc("SendMessage", _message("echo", contextId="s-1"))).json()
        )
        codes = [r["outcome"]["code"] for r in support.records()]
        assert codes.count("task_ownership_limit") == 2
    finally:
        agents.close()


# --- item 2: ownership rows unused for the retention are pruned by the sidecar's sweep -----


def test_item2_rows_unused_past_the_retention_are_pruned_and_then_refused(agents, peer):
    support, planner = agents.support, agents.planner
    old = _working_task(support)
    kept = _working_task(support)
    claimed = planner.post(_rpc("SendMessage", _message("echo p", contextId="old-ctx")))
    assert "result" in claimed.json()
    state = agents.running.sidecar.state
    inbound = "spiffe://demo.example/agent/inbound-side"
    with state.transaction() as conn:  # a week and a day unused: as if the clock had moved on
        for key in ("task:" + old["id"], "context:" + old["contextId"], "context:old-ctx"):
            conn.execute(
                "UPDATE a2a_task_owners SET used_ns = 1 WHERE agent = ? AND task_id = ?",
                ("a2a-peer:billing", key),
            )
        # the inbound side's rows (same table, another agent key): the same retention
        conn.execute(
            "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
            "VALUES (?, ?, ?, 1, 1)",
            (inbound, "task:inbound-old", "spiffe://demo.example/caller"),
        )
    poll(
        lambda: not _rows(agents, "task:" + old["id"]) and not _rows(agents, "task:inbound-old"),
        60,
        "the sweep pruning the expired rows",
    )
    assert _rows(agents, "context:old-ctx") == []
    assert _rows(agents, "task:" + kept["id"])  # used recently: kept
    seen = len(peer.seen)
    _refused_as_not_owned(support.post(_rpc("GetTask", {"id": old["id"]})))  # fail closed
    with pytest.raises(SidecarCallError) as info:
        agents.grpc["support"].call_peer("billing", "CancelTask", {"id": old["id"]})
    assert info.value.code == "task_not_owned"
    assert len(peer.seen) == seen
    got = support.post(_rpc("GetTask", {"id": kept["id"]})).json()
    assert got["result"]["id"] == kept["id"]


def test_item2_a_lookup_marks_its_row_used(agents, peer):
    task = _working_task(agents.support)
    state = agents.running.sidecar.state
    with state.transaction() as conn:
        conn.execute(
            "UPDATE a2a_task_owners SET used_ns = 5 WHERE task_id = ?", ("task:" + task["id"],)
        )
    got = agents.support.post(_rpc("GetTask", {"id": task["id"]})).json()
    assert got["result"]["id"] == task["id"]
    [row] = _rows(agents, "task:" + task["id"])
    assert row["used_ns"] > 5  # matched: its retention starts again


# --- the settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, "task_ownership_ttl_s: must be a duration in seconds from 600"),
        (-86400, "task_ownership_ttl_s: must be a duration"),
        (599, "task_ownership_ttl_s: must be a duration"),
        (math.inf, "task_ownership_ttl_s: must be a duration"),
        (math.nan, "task_ownership_ttl_s: must be a duration"),
        (10**12, "task_ownership_ttl_s: must be a duration"),
        ("7d", "a2a.task_ownership_ttl_s: expected a number, got a string"),
        (True, "a2a.task_ownership_ttl_s: expected a number, got a boolean"),
    ],
)
def test_item2_the_retention_setting_is_a_bounded_duration(tmp_path, value, why):
    with pytest.raises(ConfigError) as refused:
        parse_settings({"a2a": {"task_ownership_ttl_s": value}}, source=tmp_path / "c.yaml")
    assert why in str(refused.value)


def test_item2_the_retention_and_the_bound_have_defaults_and_are_configurable(tmp_path):
    source = tmp_path / "c.yaml"
    default = parse_settings({}, source=source)
    assert default.a2a.task_ownership_ttl_s == 7 * 86400
    chosen = parse_settings({"a2a": {"task_ownership_ttl_s": 3600}}, source=source)
    assert chosen.a2a.task_ownership_ttl_s == 3600.0
    peer = {"url": "http://127.0.0.1:1"}
    for bad, why in ((0, "must be in 1..1000000"), (10**7, "must be in 1..1000000")):
        raw = {"a2a_peers": {"p": peer | {"max_owned_per_agent": bad}}}
        with pytest.raises(ConfigError, match=why):
            parse_settings(raw, source=source)
    ok = parse_settings({"a2a_peers": {"p": peer}}, source=source)
    assert ok.a2a_peers["p"].max_owned_per_agent == 10000
