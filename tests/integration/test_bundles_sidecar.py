"""Issue 27, deliverable 1, in a running sidecar: NOT_SERVING (every call refused) until the
first bundle revision is active; the audit record's revision is the bundle's manifest
revision; activations while calls are in flight leave every call decided by exactly one
revision; a restart without the bundle server serves the persisted bundle."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import PolicyDenied
from sidecar.policy.bundle.build import build_bundle
from tests.conftest import audit_lines
from tests.support.bundle_server import BundleServer
from tests.support.bundles import KeyPair, bundle_config, marked_policy

PATH = "/bundles/authz.tar.gz"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return KeyPair("ec")


def _bundle(tmp_path, marker: str, key: KeyPair) -> bytes:
    policy = marked_policy(tmp_path / f"policy-{marker}", marker)
    return build_bundle(
        policy, revision=f"rev-{marker}", signing_key=key.private_pem, algorithm="ES256",
        key_id="k1",
    )  # fmt: skip


def _policy(server: BundleServer, tmp_path, key: KeyPair, **extra) -> dict:
    bundle = bundle_config(
        server.url,
        tmp_path,
        signing={"keyid": "k1"},
        keys={"k1": {"key": key.public_pem, "algorithm": "ES256"}},
        source={"polling": {"min_delay_seconds": 1, "max_delay_seconds": 1}},
        **extra,
    )
    # A generous timeout: this is about revisions, not a 2-core machine's latency.
    return {"bundle": bundle, "timeout_ms": 10_000}


def _health(running) -> int:
    with grpc.insecure_channel(running.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _until(condition, timeout: float = 60.0) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout * 20)):
        if condition():
            return True
        pause.wait(0.05)
    return condition()


def test_item2_not_serving_until_the_first_revision_then_audited_with_it(
    start_sidecar, tools, tmp_path, key
):
    with BundleServer() as server:
        running = start_sidecar(tools.url, policy=_policy(server, tmp_path, key))
        assert _health(running) == NOT_SERVING
        with running.client() as client, pytest.raises(PolicyDenied) as refused:
            client.call_tool("tickets.get", {"id": "1"})
        assert refused.value.code == "policy_error"
        assert tools.received == []
        server.publish(PATH, _bundle(tmp_path, "A", key))
        assert _until(lambda: _health(running) == SERVING)
        with running.client() as client:
            decision = client.check("tickets.get", {"id": "1"})
        assert decision.reasons == ("A",)
        assert decision.policy_revision == "rev-A"
    records = audit_lines(running.audit_path)
    assert records[0]["decision"]["code"] == "policy_error"
    assert records[-1]["policy"]["revision"] == "rev-A"


def test_item2_fallback_dir_serves_before_the_first_bundle(start_sidecar, tools, tmp_path, key):
    fallback = marked_policy(tmp_path / "fallback", "fallback")
    with BundleServer() as server:
        policy = _policy(server, tmp_path, key, fallback_dir=str(fallback))
        running = start_sidecar(tools.url, policy=policy)
        assert _health(running) == SERVING
        with running.client() as client:
            assert client.check("tickets.get", {"id": "1"}).reasons == ("fallback",)
        server.publish(PATH, _bundle(tmp_path, "A", key))
        assert _until(lambda: running.sidecar.engine.revision == "rev-A")
        with running.client() as client:
            assert client.check("tickets.get", {"id": "1"}).reasons == ("A",)


def test_item3_activation_while_calls_are_in_flight(start_sidecar, tools, tmp_path, key):
    bundles = {m: _bundle(tmp_path, m, key) for m in "AB"}
    with BundleServer() as server:
        server.publish(PATH, bundles["A"])
        policy = _policy(server, tmp_path, key)
        policy["bundle"]["bundles"]["authz"]["polling"] = {
            "min_delay_seconds": 3600,  # the test drives every later download itself
            "max_delay_seconds": 3600,
        }
        running = start_sidecar(tools.url, policy=policy)
        engine = running.sidecar.engine
        assert _until(lambda: engine.revision == "rev-A")
        poller = engine.bundles.poller
        failures: list[BaseException] = []
        stop = threading.Event()
        done = [0]
        progress = threading.Condition()

        def caller() -> None:
            with running.client() as client:
                while not stop.is_set():
                    try:
                        client.check("tickets.get", {"id": "1"}, timeout_s=30)
                    except BaseException as exc:  # every failure counts
                        failures.append(exc)
                    with progress:
                        done[0] += 1
                        progress.notify_all()

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        activations = 0
        try:
            for i in range(10):
                server.publish(PATH, bundles["B" if i % 2 == 0 else "A"])
                activations += poller.poll_once()
                with progress:  # calls decided under this revision before the next one
                    target = done[0] + 4
                    assert progress.wait_for(lambda t=target: done[0] >= t, timeout=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert failures == []
    assert activations == 10
    records = audit_lines(running.audit_path)
    assert len(records) > 40
    seen = set()
    for record in records:
        revision = record["policy"]["revision"]
        assert record["decision"]["reasons"] == [revision.removeprefix("rev-")], record
        seen.add(revision)
    assert seen == {"rev-A", "rev-B"}


def test_item1_restart_without_the_server_serves_the_persisted_bundle(
    start_sidecar, tools, tmp_path, key
):
    with BundleServer() as server:
        policy = _policy(server, tmp_path, key)
        server.publish(PATH, _bundle(tmp_path, "A", key))
        first = start_sidecar(tools.url, policy=policy)
        assert _until(lambda: first.sidecar.engine.revision == "rev-A")
    first.stop()
    second = start_sidecar(tools.url, policy=policy)  # the server is gone
    assert _health(second) == SERVING
    with second.client() as client:
        decision = client.check("tickets.get", {"id": "1"})
    assert (decision.reasons, decision.policy_revision) == (("A",), "rev-A")
