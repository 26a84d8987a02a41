"""Review s11, outbound: finding 2 (a peer's tasks belong to the local agent whose calls
created them). Finding 6's outbound half: test_review_s11_a2a_outbound_sse.py.

Real parts: the peer is the official a2a-sdk server (tests/support/a2a_peer.py), the sidecar
runs in identity mode jwt, two local agents (support, planner) present their own JWT-SVIDs,
over the loopback A2A endpoint (HTTP) and the gRPC API (CallPeer/StreamPeer), and under
``agent-sidecar serve`` with two workers on one state store.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidecar.client import SidecarCallError, SidecarClient
from sidecar.workers import segments
from tests.conftest import SIDECAR_AUDIENCE
from tests.e2e.test_a2a_grpc_workers import served  # noqa: F401  (a pytest fixture)
from tests.integration.test_a2a_outbound import AGENT, PEER_AUDIENCE, Outbound
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy

PLANNER = "spiffe://demo.example/agent/planner"
REFUSED_SHAPES = {"invalid_params", "malformed_request", "message_too_large", "too_many_references"}

# Every A2A call allowed: the sidecar's ownership check refuses before policy is asked.
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow", "obligations": {"log": "full"}} if input.action.kind == "a2a"
"""


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


class Agents:
    """The running sidecar and its two local agents at both doors."""

    def __init__(self, running: Any, authority: Any) -> None:
        self.running = running
        self.support = Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
        self.planner = Outbound(running, authority.issue_jwt(PLANNER, [SIDECAR_AUDIENCE]))
        self.grpc = {
            who: SidecarClient(running.address, jwt_svid=lambda t=out.token: t, timeout_s=30)
            for who, out in (("support", self.support), ("planner", self.planner))
        }

    def close(self) -> None:
        for client in self.grpc.values():
            client.close()


@pytest.fixture
def agents(start_jwt_sidecar, authority, peer, tmp_path) -> Iterator[Agents]:
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": {
                "url": peer.url,
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 3,
                "skills": {"lookup": {"operation": "read"}},
            }
        },
    )
    opened = Agents(running, authority)
    yield opened
    opened.close()


def _rpc(method: str, params: dict[str, Any], rpc_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def _message(text: str, **fields: Any) -> dict[str, Any]:
    message = {"role": "ROLE_USER", "messageId": f"m-{text}", "parts": [{"text": text}]}
    return {"message": message | fields}


def _working_task(out: Outbound) -> dict[str, Any]:
    """A task left working at the peer, made by ``out``'s agent."""
    params = _message("task") | {"configuration": {"returnImmediately": True}}
    return out.post(_rpc("SendMessage", params)).json()["result"]["task"]


def _refused_as_not_owned(answer: httpx.Response) -> None:
    error = answer.json()["error"]
    assert error["code"] == -32001, error  # A2A TaskNotFoundError: the SDK's own exception
    assert error["data"]["code"] == "task_not_owned" and error["data"]["decision_id"]


def _others_requests(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Every way to name another agent's task (or its context) at the peer."""
    task_id, context_id = task["id"], task["contextId"]
    return [
        _rpc("GetTask", {"id": task_id}),
        _rpc("CancelTask", {"id": task_id}),
        _rpc("SubscribeToTask", {"id": task_id}),
        _rpc("GetTaskPushNotificationConfig", {"taskId": task_id, "id": "cfg"}),
        _rpc("ListTaskPushNotificationConfigs", {"taskId": task_id}),
        _rpc("DeleteTaskPushNotificationConfig", {"taskId": task_id, "id": "cfg"}),
        _rpc("tasks/get", {"id": task_id}),
        _rpc("tasks/cancel", {"id": task_id}),
        _rpc("SendMessage", _message("echo continue", taskId=task_id)),
        _rpc("SendMessage", _message("echo same context", contextId=context_id)),
        _rpc("SendMessage", _message("echo refers", referenceTaskIds=["mine-not", task_id])),
        _rpc("SendStreamingMessage", _message("stream", taskId=task_id)),
        _rpc("ListTasks", {"contextId": context_id}),
    ]


# --- finding 2: the loopback endpoint --------------------------------------------------------


def test_item2_planner_cannot_get_cancel_or_continue_supports_peer_task(agents, peer):
    support, planner = agents.support, agents.planner
    task = _working_task(support)
    seen_before = len(peer.seen)
    attempts = _others_requests(task)
    for body in attempts:
        _refused_as_not_owned(planner.post(body))
    assert len(peer.seen) == seen_before  # nothing of planner's reached the peer
    records = support.records()[1:]
    assert len(records) == len(attempts)  # one audit record per refused request
    assert all(r["outcome"]["code"] == "task_not_owned" for r in records)
    assert all(not r["outcome"]["relayed"] for r in records)
    assert {r["subject"]["spiffe_id"] for r in records} == {PLANNER}
    assert [r["action"]["a2a_operation"] for r in records][:3] == [
        "get_task",
        "cancel_task",
        "subscribe",
    ]
    # support still owns its task: it can read, refer to, talk in its context and cancel it.
    got = support.post(_rpc("GetTask", {"id": task["id"]}))
    assert got.json()["result"]["id"] == task["id"]
    refers = support.post(_rpc("SendMessage", _message("echo r", referenceTaskIds=[task["id"]])))
    assert refers.json()["result"]["message"]["parts"][0]["text"].startswith("peer heard")
    same = support.post(_rpc("SendMessage", _message("echo c", contextId=task["contextId"])))
    assert "result" in same.json()
    cancelled = support.post(_rpc("CancelTask", {"id": task["id"]}))
    assert cancelled.json()["result"]["status"]["state"] == "TASK_STATE_CANCELED"
    mine = support.records()[-4:]
    assert [r["outcome"]["code"] for r in mine] == ["ok"] * 4
    # the policy input names the owner of the task a request names
    assert mine[0]["input"]["action"]["arguments"]["task_owner"] == AGENT
    assert mine[1]["input"]["action"]["arguments"]["task_owner"] == ""


def test_item2_streamed_events_make_their_task_the_streaming_agents(agents, peer):
    support, planner = agents.support, agents.planner
    with httpx.stream(
        "POST",
        support.url,
        json=_rpc("SendStreamingMessage", _message("stream")),
        headers=support.headers(),
        timeout=30,
    ) as response:
        events = [json.loads(x[5:]) for x in response.iter_lines() if x.startswith("data:")]
    task_id = events[0]["result"]["task"]["id"]
    _refused_as_not_owned(planner.post(_rpc("GetTask", {"id": task_id})))
    assert support.post(_rpc("GetTask", {"id": task_id})).json()["result"]["id"] == task_id


def test_item2_a_new_context_is_the_agents_to_invent_then_its_own(agents, peer):
    support, planner = agents.support, agents.planner
    fresh = planner.post(_rpc("SendMessage", _message("echo hi", contextId="planner-ctx-1")))
    assert "result" in fresh.json()  # nobody's yet: allowed, and now the planner's
    again = planner.post(_rpc("SendMessage", _message("echo again", contextId="planner-ctx-1")))
    assert "result" in again.json()
    _refused_as_not_owned(
        support.post(_rpc("SendMessage", _message("echo me", contextId="planner-ctx-1")))
    )


def test_item2_unknown_and_malformed_task_references_are_refused_before_sending(agents, peer):
    support = agents.support
    _refused_as_not_owned(support.post(_rpc("GetTask", {"id": "no-such-task"})))
    _refused_as_not_owned(
        support.post(_rpc("SendMessage", _message("echo x", taskId="guessed-task")))
    )
    hostile = [
        "not-a-list",
        [1, 2],
        [""],
        ["x" * 257],
        [f"t{i}" for i in range(65)],
        [{"id": "t"}],
        [None],
    ]
    for refs in hostile:
        answer = support.post(_rpc("SendMessage", _message("echo x", referenceTaskIds=refs)))
        # the parser (identifiers.py) or the ownership check (peer_tasks.py), whichever first
        assert answer.json()["error"]["data"]["code"] in REFUSED_SHAPES, refs
    assert peer.seen == []
    records = support.records()
    assert [r["outcome"]["code"] for r in records[:2]] == ["task_not_owned"] * 2
    assert len(records) == 2 + len(hostile)
    # audited as the parser refused each (its own code where it has one: errors.py audit_code)
    own = {"malformed_request", "message_too_large", "too_many_references"}
    assert {r["outcome"]["code"] for r in records[2:]} <= own
    assert not any(r["outcome"]["relayed"] for r in records)


def test_item2_list_tasks_answers_only_the_agents_own_tasks(agents, peer):
    support, planner = agents.support, agents.planner
    s_task = _working_task(support)
    p_task = _working_task(planner)
    listed = {}
    for who, out in (("support", support), ("planner", planner)):
        answer = out.post(_rpc("ListTasks", {})).json()["result"]
        listed[who] = [t["id"] for t in answer["tasks"]]
        assert answer.get("totalSize", len(listed[who])) == len(listed[who])
    assert listed == {"support": [s_task["id"]], "planner": [p_task["id"]]}
    own = planner.post(_rpc("ListTasks", {"contextId": p_task["contextId"]})).json()
    assert [t["id"] for t in own["result"]["tasks"]] == [p_task["id"]]


# --- finding 2: the gRPC door, and both doors sharing one record ----------------------------


def test_item2_grpc_call_peer_and_stream_peer_refuse_another_agents_task(agents, peer):
    support, planner = agents.grpc["support"], agents.grpc["planner"]
    made = support.call_peer(
        "billing",
        "SendMessage",
        _message("task") | {"configuration": {"returnImmediately": True}},
    )
    task = made.result["task"]
    seen_before = len(peer.seen)
    for method, params in (
        ("GetTask", {"id": task["id"]}),
        ("CancelTask", {"id": task["id"]}),
        ("SendMessage", _message("echo go", taskId=task["id"])),
        ("SendMessage", _message("echo go", referenceTaskIds=[task["id"]])),
    ):
        with pytest.raises(SidecarCallError) as info:
            planner.call_peer("billing", method, params)
        assert info.value.code == "task_not_owned", method
    with pytest.raises(SidecarCallError) as info:
        list(planner.stream_peer("billing", "SubscribeToTask", {"id": task["id"]}))
    assert info.value.code == "task_not_owned"
    assert len(peer.seen) == seen_before
    # the loopback endpoint sees the same owner: the planner there is refused, support is not
    _refused_as_not_owned(agents.planner.post(_rpc("GetTask", {"id": task["id"]})))
    got = agents.support.post(_rpc("GetTask", {"id": task["id"]}))
    assert got.json()["result"]["id"] == task["id"]
    # and a task made at the loopback endpoint is the same agent's over gRPC
    other = _working_task(agents.planner)
    assert planner.call_peer("billing", "GetTask", {"id": other["id"]}).result["id"] == other["id"]
    with pytest.raises(SidecarCallError) as info:
        support.call_peer("billing", "CancelTask", {"id": other["id"]})
    assert info.value.code == "task_not_owned"
    assert (
        support.call_peer("billing", "CancelTask", {"id": task["id"]}).result["status"]["state"]
        == "TASK_STATE_CANCELED"
    )


def test_item2_ownership_is_in_the_state_store_and_survives_a_restart(
    start_jwt_sidecar, authority, peer, tmp_path
):
    config: dict[str, Any] = {  # both sidecars: the same state dir (tests/support/running.py)
        "policy": {"dir": str(write_policy(tmp_path / "policy", POLICY))},
        "a2a": {"listen": "127.0.0.1:0"},
        "a2a_peers": {
            "billing": {
                "url": peer.url,
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 3,
            }
        },
    }
    first = Agents(start_jwt_sidecar(**config), authority)
    task = _working_task(first.support)
    first.close()
    first.running.stop()
    second = Agents(start_jwt_sidecar(**config), authority)
    try:
        _refused_as_not_owned(second.planner.post(_rpc("GetTask", {"id": task["id"]})))
        got = second.support.post(_rpc("GetTask", {"id": task["id"]}))
        assert got.json()["result"]["id"] == task["id"]
    finally:
        second.close()


# --- finding 2 across server.workers: one record in the shared state store ------------------


def test_item2_every_worker_agrees_who_owns_a_peer_task(served, peer, authority, tmp_path):  # noqa: F811
    proc, address, token = served
    planner_token = authority.issue_jwt(PLANNER, [SIDECAR_AUDIENCE])
    params = _message("task") | {"configuration": {"returnImmediately": True}}

    def on_a_connection_of_its_own(jwt: str, method: str, body: dict[str, Any]) -> Any:
        # a connection of its own: the kernel spreads them over both workers
        with SidecarClient(address, jwt_svid=lambda: jwt, timeout_s=30) as client:
            try:
                return client.call_peer("billing", method, body)
            except SidecarCallError as exc:
                return exc.code

    made = [on_a_connection_of_its_own(token, "SendMessage", params) for _ in range(6)]
    tasks = [m.result["task"]["id"] for m in made]
    for task_id in tasks:
        for _ in range(2):
            refused = on_a_connection_of_its_own(planner_token, "GetTask", {"id": task_id})
            assert refused == "task_not_owned"
            got = on_a_connection_of_its_own(token, "GetTask", {"id": task_id})
            assert got.result["id"] == task_id
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    per_worker = []
    for path in segments(tmp_path / "audit.log"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        calls = [r for r in lines if r.get("type") == "call" and r["rpc"].startswith("A2A ")]
        per_worker.append([r["outcome"]["code"] for r in calls])
    codes = [code for worker in per_worker for code in worker]
    assert codes.count("task_not_owned") == 12 and codes.count("ok") == 6 + 12
    assert len(per_worker) == 2 and all(per_worker), per_worker  # both workers served
