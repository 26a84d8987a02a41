"""Step-up approvals end to end: real gRPC on both listeners, the real CLI, a real upstream.

A step-up call waits until `agent-sidecar approvals approve` releases it, and the upstream gets
exactly one request; an approval is used once, only by the identical call, before it expires,
and survives a restart; a denial or a deadline never lets a call through.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from sidecar._proto.agentsidecar.v1 import approvals_pb2
from sidecar.approvals.client import AdminCallError
from sidecar.client import PolicyDenied, RateLimited, StepUpRequired
from tests.conftest import all_audit_lines, audit_lines
from tests.support.cli import cli as run_cli
from tests.support.settle import poll

REFUND = {"order": "A-1", "amount": 500}
ROOT = Path(__file__).resolve().parents[2]


def refunds(tools) -> list:
    return [r for r in tools.received if r.path == "/refunds"]


def cli(running, *args: str, approver: str = "alice") -> subprocess.CompletedProcess:
    return run_cli("approvals", "--admin", running.approvals_address, "--as", approver, *args)


def pending(running, timeout_s: float = 10) -> approvals_pb2.Approval:
    """The one pending approval, once the sidecar has recorded it."""
    deadline = time.monotonic() + timeout_s
    with running.approvals() as admin:
        while time.monotonic() < deadline:
            found = admin.list(["pending"])
            if found:
                assert len(found) == 1
                return found[0]
            time.sleep(0.02)
    raise AssertionError("no pending approval appeared")


def step_up_id(client, task_id: str, arguments=REFUND) -> str:
    with pytest.raises(StepUpRequired) as step_up:
        client.call_tool("payments.refund", arguments, task_id=task_id, wait=False)
    assert step_up.value.approval_id.startswith("ap-")
    return step_up.value.approval_id


def test_a_blocked_call_is_released_by_the_cli_and_relayed_once(sidecar, tools):
    with sidecar.client(timeout_s=20) as client, ThreadPoolExecutor(1) as pool:
        task = client.start_task("refund order A-1")
        call = pool.submit(client.call_tool, "payments.refund", REFUND, task_id=task.task_id)
        approval = pending(sidecar)
        assert not call.done() and refunds(tools) == []  # parked, nothing relayed
        assert approval.subject == "spiffe://demo.example/agent/support"
        assert approval.action_name == "payments.refund"
        assert json.loads(approval.arguments_json) == REFUND  # the baseline step-up logs in full
        assert approval.approvers == ["group:payments-oncall"]
        done = cli(sidecar, "approve", approval.id, "--reason", "customer confirmed")
        assert done.returncode == 0, done.stderr
        assert f"{approval.id} approved by local:alice" in done.stdout
        result = call.result(timeout=10)
    assert result.status == 200 and result.decision.effect == "allow"
    assert len(refunds(tools)) == 1
    assert refunds(tools)[0].json() == REFUND
    # On record: the call with the approval and its approver, and the approver's decision.
    [record] = [r for r in audit_lines(sidecar.audit_path) if r["rpc"] == "CallTool"]
    assert record["approval"]["id"] == approval.id
    assert record["approval"]["state"] == "used"
    assert record["approval"]["decided_by"] == "local:alice"
    assert record["approval"]["reason"] == "customer confirmed"
    assert record["input"]["approval"]["approved_by"] == "local:alice"
    assert record["input"]["approval"]["reason"] == "customer confirmed"
    assert record["outcome"]["code"] == "ok" and record["outcome"]["relayed"] is True
    [decided] = [r for r in all_audit_lines(sidecar.audit_path) if r["type"] == "approval"]
    assert (decided["event"], decided["approval_id"], decided["actor"]) == (
        "approved",
        approval.id,
        "local:alice",
    )
    assert decided["decision_id"] == approval.decision_id


def test_reuse_other_arguments_and_other_tasks_are_refused(sidecar, tools):
    with sidecar.client() as client:
        task = client.start_task("refunds").task_id
        approval_id = step_up_id(client, task)
        with sidecar.approvals() as admin:
            admin.approve(approval_id, reason="ok")
        # One argument changed: refused, and the approval is still there for the right call.
        with pytest.raises(PolicyDenied) as changed:
            client.call_tool(
                "payments.refund", REFUND | {"amount": 501}, task_id=task, approval_id=approval_id
            )
        assert changed.value.code == "approval_mismatch"
        other_task = client.start_task("other").task_id
        with pytest.raises(PolicyDenied) as moved:
            client.call_tool("payments.refund", REFUND, task_id=other_task, approval_id=approval_id)
        assert moved.value.code == "approval_mismatch"
        assert refunds(tools) == []
        assert (
            client.call_tool(
                "payments.refund", REFUND, task_id=task, approval_id=approval_id
            ).status
            == 200
        )
        with pytest.raises(PolicyDenied) as reused:
            client.call_tool("payments.refund", REFUND, task_id=task, approval_id=approval_id)
        assert reused.value.code == "approval_used"
        with pytest.raises(PolicyDenied) as unknown:
            client.call_tool("payments.refund", REFUND, task_id=task, approval_id="ap-nope")
        assert unknown.value.code == "approval_unknown"
    assert len(refunds(tools)) == 1
    codes = [
        r["outcome"]["code"] for r in audit_lines(sidecar.audit_path) if r["rpc"] == "CallTool"
    ]
    assert codes == [
        "approval_required",
        "approval_mismatch",
        "approval_mismatch",
        "ok",
        "approval_used",
        "approval_unknown",
    ]
    records = [r for r in audit_lines(sidecar.audit_path) if r["rpc"] == "CallTool"]
    assert all(r["approval"]["id"] in (approval_id, "ap-nope") for r in records)


def test_an_expired_approval_is_refused(start_sidecar, tools):
    running = start_sidecar(tools.url, approvals={"max_ttl_s": 1})
    with running.client() as client:
        task = client.start_task("refunds").task_id
        approval_id = step_up_id(client, task)
        with running.approvals() as admin:
            approval = admin.approve(approval_id, reason="ok")
            assert approval.expires_at_ns - approval.created_at_ns == 1_000_000_000
        # The sidecar's clock (this process's) passes the expiry: polled, bounded, not slept.
        poll(lambda: time.time_ns() >= approval.expires_at_ns, what="the approval's expiry")
        with pytest.raises(PolicyDenied) as expired:
            client.call_tool("payments.refund", REFUND, task_id=task, approval_id=approval_id)
        assert expired.value.code == "approval_expired"
        with running.approvals() as admin:
            assert admin.get(approval_id).state == "expired"
    assert refunds(tools) == []


def test_a_denial_ends_the_waiting_call(sidecar, tools):
    with sidecar.client(timeout_s=20) as client, ThreadPoolExecutor(1) as pool:
        task = client.start_task("refunds").task_id
        call = pool.submit(client.call_tool, "payments.refund", REFUND, task_id=task)
        approval = pending(sidecar)
        done = cli(sidecar, "deny", approval.id, "--reason", "not this customer")
        assert done.returncode == 0, done.stderr
        with pytest.raises(PolicyDenied) as denied:
            call.result(timeout=10)
    assert denied.value.code == "approval_denied"
    assert refunds(tools) == []
    [record] = [r for r in audit_lines(sidecar.audit_path) if r["rpc"] == "CallTool"]
    assert record["approval"]["state"] == "denied"
    assert record["approval"]["decided_by"] == "local:alice"


def test_a_deadline_never_approves(sidecar, tools):
    with sidecar.client() as client:
        task = client.start_task("refunds").task_id
        # The answer is StepUpRequired (the sidecar answered first), never a bare deadline.
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", REFUND, task_id=task, timeout_s=1.0)
        approval_id = step_up.value.approval_id
        # The identical call retried waits on the same approval; no second one is created.
        with pytest.raises(StepUpRequired) as again:
            client.call_tool("payments.refund", REFUND, task_id=task, timeout_s=0.5)
        assert again.value.approval_id == approval_id
        with sidecar.approvals() as admin:
            assert [a.id for a in admin.list()] == [approval_id]
            assert admin.get(approval_id).state == "pending"
    assert refunds(tools) == []


def test_a_restart_between_approval_and_use_keeps_it_usable_exactly_once(start_sidecar, tools):
    first = start_sidecar(tools.url)
    with first.client() as client:
        task = client.start_task("refunds").task_id
        approval_id = step_up_id(client, task)
    assert cli(first, "approve", approval_id, "--reason", "ok").returncode == 0
    first.stop()
    second = start_sidecar(tools.url)
    with second.client() as client:
        assert (
            client.call_tool(
                "payments.refund", REFUND, task_id=task, approval_id=approval_id
            ).status
            == 200
        )
    second.stop()
    third = start_sidecar(tools.url)
    with third.client() as client, pytest.raises(PolicyDenied) as reused:
        client.call_tool("payments.refund", REFUND, task_id=task, approval_id=approval_id)
    assert reused.value.code == "approval_used"
    assert len(refunds(tools)) == 1


def test_a_step_up_flood_is_rate_limited_and_audited(start_sidecar, tools):
    running = start_sidecar(tools.url, approvals={"max_pending_per_subject": 2})
    with running.client() as client:
        task = client.start_task("refunds").task_id
        step_up_id(client, task, REFUND | {"amount": 201})
        step_up_id(client, task, REFUND | {"amount": 202})
        with pytest.raises(RateLimited) as limited:
            client.call_tool("payments.refund", REFUND | {"amount": 203}, task_id=task, wait=False)
        assert limited.value.code == "approval_rate_limited"
        assert limited.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        with running.approvals() as admin:
            assert len(admin.list(["pending"])) == 2
    last = [r for r in audit_lines(running.audit_path) if r["rpc"] == "CallTool"][-1]
    assert last["outcome"]["code"] == "approval_rate_limited"
    assert last["decision"]["effect"] == "step_up"


def test_the_agent_api_does_not_serve_approvals(sidecar):
    with sidecar.client() as client:
        task = client.start_task("refunds").task_id
        approval_id = step_up_id(client, task)
    channel = grpc.insecure_channel(sidecar.address)
    approve = channel.unary_unary(
        "/agentsidecar.v1.Approvals/Approve",
        request_serializer=approvals_pb2.DecideApprovalRequest.SerializeToString,
        response_deserializer=approvals_pb2.Approval.FromString,
    )
    with pytest.raises(grpc.RpcError) as refused:
        approve(approvals_pb2.DecideApprovalRequest(id=approval_id, reason="me"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    with sidecar.approvals() as admin:
        assert admin.get(approval_id).state == "pending"


def test_the_unix_listener_is_private_and_needs_a_name(sidecar):
    socket = Path(sidecar.approvals_address.removeprefix("unix:"))
    assert socket.stat().st_mode & 0o777 == 0o600
    with sidecar.approvals(approver="") as admin, pytest.raises(AdminCallError) as nameless:
        admin.list()
    assert nameless.value.status == grpc.StatusCode.PERMISSION_DENIED


def test_an_approver_outside_the_obligations_group_is_refused(sidecar, tools):
    with sidecar.client() as client:
        task = client.start_task("refunds").task_id
        approval_id = step_up_id(client, task)
    done = cli(sidecar, "approve", approval_id, "--reason", "ok", approver="mallory")
    assert done.returncode == 1
    assert "not_an_approver" in done.stderr
    with sidecar.approvals() as admin:
        assert admin.get(approval_id).state == "pending"
    [refusal] = [r for r in all_audit_lines(sidecar.audit_path) if r["type"] == "approval"]
    assert (refusal["event"], refusal["actor"], refusal["code"]) == (
        "refused",
        "local:mallory",
        "not_an_approver",
    )


def test_cli_list_show_and_watch(sidecar):
    events: list[tuple[str, str]] = []
    with sidecar.approvals() as admin:
        stream = admin.watch()

        def read() -> None:
            for event in stream:
                events.append((event.type, event.approval.state))
                if event.type == "approved":
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # Barrier: the watch is subscribed (a later approval is announced to it).
        poll(lambda: sidecar.sidecar.approvals._watchers, what="the watch subscribed")
        with sidecar.client() as client:
            task = client.start_task("refunds").task_id
            approval_id = step_up_id(client, task)
        listed = cli(sidecar, "list", "--state", "pending")
        assert approval_id in listed.stdout and "payments.refund" in listed.stdout
        shown = json.loads(cli(sidecar, "show", approval_id).stdout)
        assert shown["id"] == approval_id and shown["state"] == "pending"
        assert shown["digest"].startswith("sha256:")
        assert cli(sidecar, "approve", approval_id, "--reason", "ok").returncode == 0
        reader.join(10)
    assert events == [("created", "pending"), ("approved", "approved")]
    bad = cli(sidecar, "list", "--state", "bogus")
    assert bad.returncode == 1 and "unknown state" in bad.stderr


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    failures = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
        else:
            type(self).bodies.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


STEP_UP_METADATA_POLICY = """package agentsidecar.authz

import rego.v1

decision := {
	"effect": "step_up",
	"reasons": ["always ask"],
	"obligations": {"approval": {"approvers": [], "ttl_s": 60}, "log": "metadata"},
}
"""


@pytest.mark.parametrize("log_level", ["full", "metadata"])
def test_each_pending_approval_is_posted_to_the_notify_url(
    start_sidecar, tools, tmp_path, log_level
):
    _Hook.bodies, _Hook.failures = [], 1
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    overrides = {}
    if log_level == "metadata":
        policy = tmp_path / "policy" / "agentsidecar"
        policy.mkdir(parents=True)
        (policy / "authz.rego").write_text(STEP_UP_METADATA_POLICY)
        overrides["policy"] = {"dir": str(tmp_path / "policy")}
    running = start_sidecar(
        tools.url,
        approvals={"notify_url": f"http://127.0.0.1:{hook.server_port}/approvals"},
        **overrides,
    )
    try:
        with running.client() as client:
            task = client.start_task("refunds").task_id
            approval_id = step_up_id(client, task, {"order": "SECRET-ORDER-7", "amount": 500})
        poll(lambda: _Hook.bodies, what="the notification delivered")
    finally:
        hook.shutdown()
    [body] = _Hook.bodies  # delivered after one 503, once
    assert body["type"] == "approval.pending"
    assert body["approval"]["id"] == approval_id
    assert body["approval"]["action"]["name"] == "payments.refund"
    if log_level == "full":
        assert body["approval"]["arguments"]["value"]["order"] == "SECRET-ORDER-7"
    else:
        assert "SECRET-ORDER-7" not in json.dumps(body)
        assert body["approval"]["arguments"] == {"log": "metadata", "keys": ["amount", "order"]}


def test_item18_the_printed_local_name_is_accepted_by_approvals_as(sidecar, tools):
    with sidecar.client(timeout_s=20) as client:
        task = client.start_task("refund order A-1").task_id
        approval_id = step_up_id(client, task)
    done = cli(sidecar, "approve", approval_id, "--reason", "ok", approver="local:alice")
    assert done.returncode == 0, done.stderr
    assert f"{approval_id} approved by local:alice" in done.stdout  # not local:local:alice
    refused = cli(sidecar, "show", approval_id, approver="local:")
    assert refused.returncode != 0
    assert "it is recorded as local:NAME" in refused.stderr


def test_item3_item16_a_long_step_up_wait_ends_with_the_approval_id_never_a_bare_deadline(
    sidecar, tools
):
    """gRPC rounds a timeout up when it sends it (10.5 s arrives as 10.6 s); the sidecar must
    still answer first: approval_required with the approval id, audited, also under load."""
    from sidecar.client import StepUpRequired

    stop = threading.Event()

    def load() -> int:
        done = 0
        with sidecar.client() as client:
            while not stop.is_set():
                client.check("tickets.get", {"id": str(done)})
                done += 1
        return done

    with sidecar.client(timeout_s=10.5) as client, ThreadPoolExecutor(6) as pool:
        task = client.start_task("refunds").task_id
        background = [pool.submit(load) for _ in range(2)]
        waits = [
            pool.submit(
                client.call_tool,
                "payments.refund",
                {"order": f"A-{i}", "amount": 500},
                task_id=task,
            )
            for i in range(4)
        ]
        outcomes = []
        for wait in waits:
            try:
                wait.result(timeout=30)
            except StepUpRequired as exc:
                outcomes.append(exc.approval_id)
            except Exception as exc:  # the bug this test is about
                outcomes.append(f"{type(exc).__name__}: {getattr(exc, 'code', '')}")
        stop.set()
        assert all(b.result(timeout=30) > 0 for b in background)
    assert all(o.startswith("ap-") for o in outcomes), outcomes
    records = [r for r in audit_lines(sidecar.audit_path) if r["rpc"] == "CallTool"]
    assert sorted(r["approval"]["id"] for r in records) == sorted(outcomes)
    assert {r["outcome"]["code"] for r in records} == {"approval_required"}
    assert refunds(tools) == []
