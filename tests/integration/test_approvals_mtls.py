"""The approvals API over TCP: mTLS with an allow-list of approver SPIFFE IDs. An agent can
never approve its own request: not with its own SVID, not even if an operator lists it."""

from __future__ import annotations

import grpc
import pytest

from sidecar.approvals.client import AdminCallError, ApprovalsClient
from sidecar.client import StepUpRequired
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from tests.conftest import all_audit_lines, audit_lines
from tests.support.running import APPROVER

SIDECAR_ID = "spiffe://demo.example/ns/agents/sa/support-sidecar"
AGENT = "spiffe://demo.example/agent/support"
AUDIENCE = "spiffe://demo.example/agent-sidecar"
SERVER_NAME = "agent-sidecar"
REFUND = {"order": "A-1", "amount": 500}


@pytest.fixture
def start(start_sidecar, tools, authority, tmp_path):
    api = DevWorkloadApiServer(
        DevWorkloadApi(authority, SIDECAR_ID, dns_names=(SERVER_NAME,)), tmp_path / "wl.sock"
    )
    api.start()

    def start(approvers: list[str]):
        running = start_sidecar(
            tools.url,
            identity={"mode": "jwt", "socket": f"unix://{api.socket_path}", "audience": AUDIENCE},
            approvals={"listen": "127.0.0.1:0", "approvers": approvers},
        )
        assert running.sidecar.identity.wait_ready(10)
        return running

    yield start
    api.stop()


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
    with ApprovalsClient(running.approvals_address, tls=creds, server_name=SERVER_NAME) as anon:
        with pytest.raises(AdminCallError) as refused:
            anon.list()
    assert refused.value.status == grpc.StatusCode.UNAVAILABLE  # the handshake fails


def test_a_tcp_listener_needs_an_allow_list(tmp_path, tools):
    from sidecar.config import ConfigError
    from tests.support.running import sidecar_settings

    with pytest.raises(ConfigError, match="approvals.approvers: required"):
        sidecar_settings(tmp_path, tools.url, approvals={"listen": "127.0.0.1:7444"})
