"""Tasks: act calls need one; ending it (or its TTL) revokes its approvals and cached
credentials, and every later call under it is denied with task_ended, even after a restart."""

from __future__ import annotations

import time

import grpc
import pytest

from sidecar.client import InvalidRequest, PolicyDenied, StepUpRequired
from tests.conftest import SIDECAR_AUDIENCE as AUDIENCE
from tests.conftest import audit_lines
from tests.support.settle import poll

REFUND = {"order": "A-1", "amount": 500}


def test_act_needs_a_task_read_does_not(sidecar, tools):
    with sidecar.client() as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200
        with pytest.raises(PolicyDenied) as denied:
            client.call_tool("tickets.create", {"title": "t"})
        assert denied.value.reasons == ("act on tickets.create needs a task (StartTask)",)
        task = client.start_task("file a ticket")
        assert (
            client.call_tool("tickets.create", {"title": "t"}, task_id=task.task_id).status == 201
        )
    assert [r.path for r in tools.received] == ["/tickets/1", "/tickets"]


def test_calls_are_counted_and_given_to_policy(sidecar):
    with sidecar.client() as client:
        task = client.start_task("triage", ttl_s=120)
        assert task.task_id.startswith("t-") and task.state == "active"
        assert task.owner == "spiffe://demo.example/agent/support"
        assert (task.expires_at_ns - task.started_at_ns) == 120 * 10**9
        for _ in range(3):
            client.call_tool("tickets.get", {"id": "1"}, task_id=task.task_id)
        client.check("tickets.get", {"id": "1"}, task_id=task.task_id)  # a Check is not counted
        ended = client.end_task(task.task_id)
    assert ended.state == "ended" and ended.calls == 3
    calls = [r for r in audit_lines(sidecar.audit_path) if r["rpc"] in ("CallTool", "Check")]
    assert [r["input"]["task"]["calls"] for r in calls] == [0, 1, 2, 3]
    assert all(r["input"]["task"]["intent"] == "triage" for r in calls)
    tasks = [r for r in audit_lines(sidecar.audit_path, "task")]
    assert [(r["rpc"], r["task"]["state"]) for r in tasks] == [
        ("StartTask", "active"),
        ("EndTask", "ended"),
    ]


def test_end_task_denies_later_calls_and_revokes_its_approvals(sidecar, tools):
    with sidecar.client() as client:
        task = client.start_task("refunds").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", REFUND, task_id=task, wait=False)
        approval_id = step_up.value.approval_id
        client.end_task(task)
        with sidecar.approvals() as admin:
            assert admin.get(approval_id).state == "revoked"
        for call in (
            lambda: client.call_tool("tickets.get", {"id": "1"}, task_id=task),
            lambda: client.call_tool(
                "payments.refund", REFUND, task_id=task, approval_id=approval_id
            ),
        ):
            with pytest.raises(PolicyDenied) as ended:
                call()
            assert ended.value.code == "task_ended"
            assert ended.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert tools.received == []
    records = audit_lines(sidecar.audit_path)
    assert [r["outcome"]["code"] for r in records if r["rpc"] == "CallTool"] == [
        "approval_required",
        "task_ended",
        "task_ended",
    ]
    from tests.conftest import all_audit_lines

    [revoked] = [r for r in all_audit_lines(sidecar.audit_path) if r["type"] == "approval"]
    assert (revoked["event"], revoked["approval_id"], revoked["task_id"]) == (
        "revoked",
        approval_id,
        task,
    )


def test_a_waiting_call_ends_when_its_task_ends(sidecar, tools):
    from concurrent.futures import ThreadPoolExecutor

    with sidecar.client(timeout_s=20) as client, ThreadPoolExecutor(1) as pool:
        task = client.start_task("refunds").task_id
        call = pool.submit(client.call_tool, "payments.refund", REFUND, task_id=task)
        with sidecar.approvals() as admin:
            poll(lambda: admin.list(["pending"]), what="the call's approval pending")
        client.end_task(task)
        with pytest.raises(PolicyDenied) as revoked:
            call.result(timeout=10)
    assert revoked.value.code == "approval_revoked"
    assert tools.received == []


def test_a_task_ends_when_its_ttl_passes(start_sidecar, tools):
    running = start_sidecar(tools.url)
    with running.client() as client:
        started = client.start_task("quick", ttl_s=1)
        task = started.task_id
        assert client.call_tool("tickets.get", {"id": "1"}, task_id=task).status == 200
        # The sidecar's clock (this process's) passes the TTL: polled, bounded, not slept.
        poll(lambda: time.time_ns() >= started.expires_at_ns, what="the task's expiry")
        with pytest.raises(PolicyDenied) as ended:
            client.call_tool("tickets.get", {"id": "1"}, task_id=task)
    assert ended.value.code == "task_ended"


def test_an_ended_task_stays_ended_after_a_restart(start_sidecar, tools):
    first = start_sidecar(tools.url)
    with first.client() as client:
        task = client.start_task("x").task_id
        client.end_task(task)
    first.stop()
    second = start_sidecar(tools.url)
    with second.client() as client, pytest.raises(PolicyDenied) as ended:
        client.call_tool("tickets.get", {"id": "1"}, task_id=task)
    assert ended.value.code == "task_ended"


def test_unknown_tasks_and_bad_requests(sidecar):
    with sidecar.client() as client:
        with pytest.raises(PolicyDenied) as unknown:
            client.call_tool("tickets.get", {"id": "1"}, task_id="t-made-up")
        assert unknown.value.code == "task_unknown"
        with pytest.raises(PolicyDenied) as unknown_end:
            client.end_task("t-made-up")
        assert unknown_end.value.code == "task_unknown"
        with pytest.raises(InvalidRequest) as too_long:
            client.start_task("x", ttl_s=10**6)
        assert too_long.value.code == "invalid_task"


@pytest.fixture
def jwt_sidecar(start_jwt_sidecar, tools):
    """JWT mode (two agents can call), and the tickets target takes a JWT-SVID."""
    targets = {name: {"base_url": tools.url} for name in ("tickets", "kb", "payments", "partner")}
    targets["tickets"]["auth"] = {"type": "jwt-svid", "audience": "spiffe://demo.example/tickets"}
    return start_jwt_sidecar(targets=targets)


def _agent(running, authority, spiffe_id: str):
    token = authority.issue_jwt(spiffe_id, [AUDIENCE])
    return running.client(jwt_svid=lambda: token)


def test_another_agents_task_does_not_exist_for_it(jwt_sidecar, authority):
    with _agent(jwt_sidecar, authority, "spiffe://demo.example/agent/support") as support:
        task = support.start_task("mine").task_id
        with _agent(jwt_sidecar, authority, "spiffe://demo.example/agent/planner") as other:
            for call in (
                lambda: other.call_tool("tickets.get", {"id": "1"}, task_id=task),
                lambda: other.end_task(task),
            ):
                with pytest.raises(PolicyDenied) as unknown:
                    call()
                assert unknown.value.code == "task_unknown"
        assert support.end_task(task).state == "ended"


def test_credentials_are_minted_per_task_and_dropped_when_it_ends(jwt_sidecar, authority, tools):
    identity = jwt_sidecar.sidecar.identity
    with _agent(jwt_sidecar, authority, "spiffe://demo.example/agent/support") as client:
        first = client.start_task("a").task_id
        second = client.start_task("b").task_id
        for task in (first, first, second):
            client.call_tool("tickets.get", {"id": "1"}, task_id=task)
        assert {first, second} <= identity.cached_scopes()
        client.end_task(first)
        assert first not in identity.cached_scopes()
        assert second in identity.cached_scopes()
    tokens = [r.headers["authorization"] for r in tools.received]
    assert tokens[0] == tokens[1]  # reused within the task
    assert tokens[2] != tokens[0]  # another task gets its own
