"""End to end over real gRPC (unix socket) against a real HTTP upstream, baseline policy."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.client import PolicyDenied, StepUpRequired
from tests.conftest import audit_lines


def test_allowed_call_is_relayed_and_returns_the_upstream_body(sidecar, tools):
    with sidecar.client() as client:
        result = client.call_tool("tickets.get", {"id": "7"})
    assert result.status == 200
    assert result.json() == {"id": "7", "title": "Printer on fire", "status": "open"}
    assert result.decision.effect == "allow"
    assert len(result.decision.decision_id) == 26
    [received] = tools.received
    assert (received.method, received.path) == ("GET", "/tickets/7")
    # The upstream can join its logs with ours.
    assert received.headers["x-request-id"] == result.decision.decision_id


def test_post_arguments_become_the_json_body(sidecar, tools, task):
    with sidecar.client() as client:
        result = client.call_tool(
            "tickets.create", {"title": "Broken", "priority": 2}, task_id=task
        )
    assert result.status == 201
    assert tools.received[0].json() == {"title": "Broken", "priority": 2}


def test_denied_call_never_reaches_the_upstream(sidecar, tools, task):
    with sidecar.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.close", {"id": "7"}, task_id=task)
    assert denied.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.code == "policy_deny"
    assert denied.value.reasons == (
        "spiffe://demo.example/agent/support holds no act grant on tickets.close",
    )
    assert len(denied.value.decision_id) == 26
    assert tools.received == []


def test_sensitive_data_to_an_external_target_is_denied(sidecar, tools, task):
    with sidecar.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("partner.notify", {"note": "card 4111 1111 1111 1111"}, task_id=task)
    assert denied.value.reasons == (
        "data class credit_card may not be sent to external target partner",
    )
    assert tools.received == []


def test_redact_obligation_is_applied_before_relay(sidecar, tools, task):
    with sidecar.client() as client:
        result = client.call_tool(
            "partner.notify", {"note": "mail bob@example.org today"}, task_id=task
        )
    assert result.decision.obligations["redact"] == ["email"]
    assert tools.received[0].json() == {"note": "mail [REDACTED:email] today"}


def test_step_up_is_failed_precondition_and_not_relayed(sidecar, tools, task):
    with sidecar.client() as client, pytest.raises(StepUpRequired) as step_up:
        client.call_tool(
            "payments.refund", {"order": "A-1", "amount": 500}, task_id=task, wait=False
        )
    assert step_up.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert step_up.value.code == "approval_required"
    assert step_up.value.approval_id.startswith("ap-")
    assert step_up.value.decision.obligations["approval"] == {
        "approvers": ["group:payments-oncall"],
        "ttl_s": 900,
    }
    assert tools.received == []


def test_check_decides_without_relaying(sidecar, tools, task):
    with sidecar.client() as client:
        allow = client.check("tickets.get", {"id": "1"})
        deny = client.check("tickets.close", {"id": "1"}, task_id=task)
        step_up = client.check("payments.refund", {"amount": 1000}, task_id=task)
    assert (allow.effect, deny.effect, step_up.effect) == ("allow", "deny", "step_up")
    assert deny.reasons and step_up.reasons
    assert allow.policy_revision == sidecar.sidecar.engine.revision
    assert tools.received == []


def test_identity_claims_in_metadata_are_ignored(sidecar, tools):
    channel = grpc.insecure_channel(sidecar.address)
    from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

    stub = sidecar_pb2_grpc.SidecarStub(channel)
    response = stub.Check(
        sidecar_pb2.CheckRequest(tool="tickets.close", arguments_json="{}"),
        metadata=(("x-spiffe-id", "spiffe://demo.example/agent/admin"),),
    )
    channel.close()
    assert response.decision.effect == "deny"
    record = audit_lines(sidecar.audit_path)[-1]
    assert record["subject"]["spiffe_id"] == "spiffe://demo.example/agent/support"


def test_agent_metadata_is_not_forwarded_upstream(sidecar, tools):
    channel = grpc.insecure_channel(sidecar.address)
    from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

    sidecar_pb2_grpc.SidecarStub(channel).CallTool(
        sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "9"}'),
        metadata=(("authorization", "Bearer agent-token"), ("cookie", "a=b")),
    )
    channel.close()
    headers = tools.received[0].headers
    assert "authorization" not in headers and "cookie" not in headers


def test_every_call_leaves_exactly_one_audit_record(sidecar, tools, task):
    calls = [
        ("tickets.get", {"id": "1"}),
        ("tickets.close", {"id": "1"}),
        ("payments.refund", {"amount": 500}),
        ("nope.unknown", {}),
        ("tickets.get", {"id": ".."}),
    ]
    ids = []
    with sidecar.client() as client:
        for tool, args in calls:
            try:
                ids.append(
                    client.call_tool(tool, args, task_id=task, wait=False).decision.decision_id
                )
            except Exception as exc:  # every outcome counts
                ids.append(exc.decision_id or None)
        client.check("tickets.get", {"id": "1"})
    records = audit_lines(sidecar.audit_path)
    assert len(records) == len(calls) + 1
    assert [r["action"]["name"] for r in records[: len(calls)]] == [t for t, _ in calls]
    for decision_id, record in zip(ids, records, strict=False):
        if decision_id:
            assert record["decision_id"] == decision_id
    assert [r["outcome"]["code"] for r in records] == [
        "ok",
        "policy_deny",
        "approval_required",
        "unknown_tool",
        "invalid_arguments",
        "ok",
    ]
    assert [r["outcome"]["relayed"] for r in records] == [True, False, False, False, False, False]


def test_argument_values_are_not_audited_unless_the_log_obligation_says_so(sidecar, task):
    with sidecar.client() as client:
        client.call_tool("tickets.create", {"title": "secret-title-value"}, task_id=task)
        with pytest.raises(PolicyDenied):
            client.call_tool("tickets.close", {"id": "value-of-a-denied-call"}, task_id=task)
    text = sidecar.audit_path.read_text()
    assert "value-of-a-denied-call" not in text  # deny: metadata only
    allowed, denied = audit_lines(sidecar.audit_path)
    assert denied["action"]["arguments"] == {"log": "metadata", "keys": ["id"]}
    # The baseline policy asks for redacted logs on allow: values kept, data classes masked.
    assert allowed["action"]["arguments"]["log"] == "redacted"


def test_health_is_serving_and_reflection_lists_the_services(sidecar):
    with grpc.insecure_channel(sidecar.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "agentsidecar.v1.Sidecar"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in answer.list_services_response.service}
    assert {"agentsidecar.v1.Sidecar", "grpc.health.v1.Health"} <= names
