"""The approvals API over TCP: mTLS with an allow-list of approver SPIFFE IDs. An agent can
never approve its own request: not with its own SVID, not even if an operator lists it."""

from __future__ import annotations

import grpc
import pytest

from sidecar.approvals.client import AdminCallError, ApprovalsClient
from sidecar.client import PolicyDenied, StepUpRequired
from tests.conftest import SIDECAR_AUDIENCE as AUDIENCE
from tests.conftest import SIDECAR_SERVER_NAME as SERVER_NAME
from tests.conftest import all_audit_lines, audit_lines
from tests.support.cli import cli
from tests.support.running import APPROVER

AGENT = "spiffe://demo.example/agent/support"
REFUND = {"order": "A-1", "amount": 500}


@pytest.fixture
def start(start_jwt_sidecar):
    def start(approvers: list[str]):
        return start_jwt_sidecar(approvals={"listen": "127.0.0.1:0", "approvers": approvers})

    return start


def _admin(running, authority, spiffe_id: str) -> ApprovalsClient:
    svid = authority.issue_x509(spiffe_id)
    creds = grpc.ssl_channel_credentials(authority.x509_bundle_pem, svid.key_pem, svid.chain_pem)
    return ApprovalsClient(running.approvals_address, tls=creds, server_name=SERVER_NAME)


def _step_up(running, authority) -> str:
    token = authority.issue_jwt(AGENT, [AUDIENCE])
    with running.client(jwt_svid=lambda: token) as client:
        task = client.start_task("refunds").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", REFUND, task_id=task, wait=False)
        approval_id = step_up.value.approval_id
        return approval_id, task, token


def test_an_agent_cannot_approve_its_own_request(start, authority, tools):
    running = start([APPROVER])
    approval_id, task, token = _step_up(running, authority)
    with _admin(running, authority, AGENT) as agent, pytest.raises(AdminCallError) as refused:
        agent.approve(approval_id, reason="I approve myself")
    assert refused.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert "not_an_approver" in str(refused.value)
    with _admin(running, authority, APPROVER) as alice:
        assert alice.get(approval_id).state == "pending"
        approved = alice.approve(approval_id, reason="checked")
    assert approved.decided_by == APPROVER
    with running.client(jwt_svid=lambda: token) as client:
        result = client.call_tool("payments.refund", REFUND, task_id=task, approval_id=approval_id)
    assert result.status == 200
    [used] = [r for r in audit_lines(running.audit_path) if r["rpc"] == "CallTool"][-1:]
    assert used["approval"]["decided_by"] == APPROVER
    assert used["input"]["approval"]["approved_by"] == APPROVER


def test_even_a_listed_approver_cannot_approve_its_own_request(start, authority, tools):
    running = start([APPROVER, AGENT])  # an operator's mistake: the agent is an approver
    approval_id, _, _ = _step_up(running, authority)
    with _admin(running, authority, AGENT) as agent, pytest.raises(AdminCallError) as refused:
        agent.approve(approval_id, reason="I approve myself")
    assert refused.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert "self_approval" in str(refused.value)
    [refusal] = [r for r in all_audit_lines(running.audit_path) if r["type"] == "approval"]
    assert (refusal["event"], refusal["actor"], refusal["code"]) == (
        "refused",
        AGENT,
        "self_approval",
    )
    assert [r for r in tools.received if r.path == "/refunds"] == []


def test_a_client_without_a_certificate_is_refused(start, authority):
    running = start([APPROVER])
    creds = grpc.ssl_channel_credentials(authority.x509_bundle_pem)
    anon = ApprovalsClient(running.approvals_address, tls=creds, server_name=SERVER_NAME)
    with anon, pytest.raises(AdminCallError) as refused:
        anon.list()
    assert refused.value.status == grpc.StatusCode.UNAVAILABLE  # the handshake fails


def test_a_tcp_listener_needs_an_allow_list(tmp_path, tools):
    from sidecar.config import ConfigError
    from tests.support.running import sidecar_settings

    with pytest.raises(ConfigError, match=r"approvals\.approvers: required"):
        sidecar_settings(tmp_path, tools.url, approvals={"listen": "127.0.0.1:7444"})


def test_the_cli_approves_over_mtls_with_svid_files(start, authority, tmp_path):
    running = start([APPROVER])
    approval_id, _, _ = _step_up(running, authority)
    svid = authority.issue_x509(APPROVER)
    (tmp_path / "alice.pem").write_bytes(svid.chain_pem)
    (tmp_path / "alice.key").write_bytes(svid.key_pem)
    (tmp_path / "bundle.pem").write_bytes(authority.x509_bundle_pem)
    done = cli(
        "approvals",
        "--admin",
        running.approvals_address,
        "--cert",
        str(tmp_path / "alice.pem"),
        "--key",
        str(tmp_path / "alice.key"),
        "--bundle",
        str(tmp_path / "bundle.pem"),
        "--server-name",
        SERVER_NAME,
        "approve",
        approval_id,
        "--reason",
        "verified by phone",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{approval_id} approved by {APPROVER}"


def test_another_agent_or_another_tool_cannot_use_the_approval(start, authority, tools):
    running = start([APPROVER])
    approval_id, task, token = _step_up(running, authority)
    with _admin(running, authority, APPROVER) as alice:
        alice.approve(approval_id, reason="checked")
    planner = authority.issue_jwt("spiffe://demo.example/agent/planner", [AUDIENCE])
    with running.client(jwt_svid=lambda: planner) as other, pytest.raises(PolicyDenied) as theft:
        other.call_tool("payments.refund", REFUND, approval_id=approval_id)
    assert theft.value.code == "approval_mismatch"
    with running.client(jwt_svid=lambda: token) as client:
        with pytest.raises(PolicyDenied) as other_tool:
            client.call_tool("tickets.create", REFUND, task_id=task, approval_id=approval_id)
        assert other_tool.value.code == "approval_mismatch"
        assert (
            client.call_tool(
                "payments.refund", REFUND, task_id=task, approval_id=approval_id
            ).status
            == 200
        )
    assert len([r for r in tools.received if r.path == "/refunds"]) == 1
