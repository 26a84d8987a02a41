"""The OPA engine over a real HTTP (and unix-socket) connection to a server speaking OPA's Data
API: every failure denies with its own code, deadlines bound every wait, readiness follows
OPA's bundle health, and OPA's decision id joins our audit record."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import PolicyDenied
from tests.conftest import REGO, audit_lines
from tests.support.opa_server import FakeOpa
from tests.support.settle import poll


@pytest.fixture
def opa():
    with FakeOpa(REGO) as server:
        yield server


def _opa_sidecar(start_sidecar, tools, url: str, **policy):
    return start_sidecar(tools.url, policy={"engine": "opa", "opa_url": url, **policy})


def test_decisions_come_from_opa_and_join_its_decision_log(start_sidecar, tools, opa):
    running = _opa_sidecar(start_sidecar, tools, opa.url)
    with running.client() as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200
        with pytest.raises(PolicyDenied) as denied:
            client.call_tool("tickets.close", {"id": "1"})
        task = client.start_task("refunds").task_id
        step_up = client.check("payments.refund", {"amount": 500}, task_id=task)
    assert denied.value.code == "policy_deny"
    assert step_up.effect == "step_up"
    assert len(opa.requests) == 3
    assert opa.requests[0]["path"] == "/v1/data/agentsidecar/authz/decision?provenance=true"
    assert opa.requests[0]["body"]["input"]["action"]["name"] == "tickets.get"
    records = audit_lines(running.audit_path)
    assert all(len(r["policy"]["engine_decision_id"]) == 36 for r in records)  # OPA's uuid
    assert records[0]["policy"]["engine"] == "opa"
    assert records[0]["policy"]["revision"] == f"opa:authz@{opa.engine.revision}"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("status:500", "opa_bad_response"),
        ("status:400", "opa_bad_response"),
        ("malformed", "opa_bad_response"),
        ("not_object", "opa_bad_response"),
        ("no_result", "policy_undefined"),
        ("drop", "opa_unavailable"),
    ],
)
def test_each_opa_failure_denies_with_its_code(start_sidecar, tools, opa, fault, code):
    opa.fault = fault
    # A generous timeout: these cases are about codes; timeouts have their own tests below.
    running = _opa_sidecar(start_sidecar, tools, opa.url, timeout_ms=5000)
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == code
    assert tools.received == []
    assert audit_lines(running.audit_path)[0]["outcome"]["code"] == code


def test_item9_an_undefined_decision_keeps_opas_decision_id(start_sidecar, tools, opa):
    """OPA answered (without a result): its decision log has the decision, so ours joins it."""
    opa.fault = "no_result"
    running = _opa_sidecar(start_sidecar, tools, opa.url, timeout_ms=5000)
    with running.client() as client, pytest.raises(PolicyDenied):
        client.call_tool("tickets.get", {"id": "1"})
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["code"] == "policy_undefined"
    assert record["policy"]["engine_decision_id"] == opa.decision_ids[-1]


def test_connection_refused_is_opa_unavailable(start_sidecar, tools, opa):
    url = opa.url
    opa.__exit__(None, None, None)
    running = _opa_sidecar(start_sidecar, tools, url, timeout_ms=5000)
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == "opa_unavailable"


def test_a_slow_opa_times_out_at_the_policy_timeout(start_sidecar, tools, opa):
    opa.fault = "delay:2"
    running = _opa_sidecar(start_sidecar, tools, opa.url, timeout_ms=150)
    started = time.monotonic()
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == "opa_timeout"
    assert time.monotonic() - started < 1.5


def test_the_agents_deadline_bounds_the_opa_call(start_sidecar, tools, opa):
    opa.fault = "delay:2"
    running = _opa_sidecar(start_sidecar, tools, opa.url, timeout_ms=60000)
    started = time.monotonic()
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"}, timeout_s=0.4)
    assert denied.value.code == "opa_timeout"
    assert time.monotonic() - started < 1.0
    assert len(opa.requests) == 1  # no retry


def test_opa_over_a_unix_socket(start_sidecar, tools, tmp_path):
    with FakeOpa(REGO, unix_socket=tmp_path / "opa.sock") as opa:
        running = _opa_sidecar(start_sidecar, tools, opa.url)
        with running.client() as client:
            assert client.check("tickets.get", {"id": "1"}).effect == "allow"


def test_readiness_waits_for_opa_bundles(start_sidecar, tools, opa):
    opa.healthy = False
    running = _opa_sidecar(start_sidecar, tools, opa.url)

    def status() -> int:
        with grpc.insecure_channel(running.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status

    # Barrier: a second health check has begun, so the first one's answer (unhealthy
    # bundles) has been applied: the health service starts out SERVING for "".
    poll(lambda: opa.health_checks >= 2, what="two OPA health checks")
    assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    opa.healthy = True
    poll(lambda: status() == health_pb2.HealthCheckResponse.SERVING, what="SERVING")


def test_fail_open_is_config_only_and_read_only(start_sidecar, tools, opa):
    opa.fault = "status:503"
    running = _opa_sidecar(start_sidecar, tools, opa.url, fail_open_on_engine_error=["tickets.get"])
    with running.client() as client:
        result = client.call_tool("tickets.get", {"id": "1"})
        assert result.decision.code == "fail_open"
        with pytest.raises(PolicyDenied) as denied:
            client.call_tool("tickets.create", {"title": "t"})  # act: never fails open
    assert denied.value.code == "opa_bad_response"
    assert running.sidecar.calls.path.stats["fail_open"] == 1
    records = audit_lines(running.audit_path)
    assert records[0]["decision"]["code"] == "fail_open"
    assert "fail-open (opa_bad_response)" in records[0]["decision"]["reasons"][0]


def test_fail_open_never_covers_a_policy_deny(start_sidecar, tools, opa):
    running = _opa_sidecar(
        start_sidecar,
        tools,
        opa.url,
        fail_open_on_engine_error=["tickets.get"],
        dir=str(REGO),
    )
    opa.fault = "no_result"  # undefined is policy's answer, not an engine failure
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == "policy_undefined"


def test_fail_open_on_an_act_tool_is_a_config_error(tools, tmp_path):
    from sidecar.config import ConfigError
    from tests.support.running import sidecar_settings

    with pytest.raises(ConfigError, match=r"fail_open_on_engine_error\[0\]"):
        sidecar_settings(
            tmp_path, tools.url, policy={"fail_open_on_engine_error": ["tickets.create"]}
        )
