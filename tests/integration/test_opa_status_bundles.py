"""Issue 27 deliverables 3 and 4 with bundles: a sidecar polling a real bundle server reports
each bundle's state to a real status receiver and logs its decisions with the bundle's
revision (``bundles: {NAME: {revision}}``, as OPA does), both through a service of
``policy.bundle.services`` with its bearer token."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from sidecar.policy.bundle.build import build_bundle
from tests.conftest import audit_lines
from tests.integration.test_opa_status import OPA_BUNDLE_ALWAYS, OPA_BUNDLE_KEYS
from tests.support.bundle_server import BundleServer
from tests.support.bundles import KeyPair, bundle_config, marked_policy
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for

PATH = "/bundles/authz.tar.gz"
TOKEN = "control-plane-token-0123456789"


@pytest.fixture
def receiver() -> Iterator[OpaReceiver]:
    r = OpaReceiver()
    yield r
    r.stop()


def _bundle(tmp_path, marker: str, key: KeyPair) -> bytes:
    policy = marked_policy(tmp_path / f"policy-{marker}", marker)
    return build_bundle(
        policy, revision=f"rev-{marker}", signing_key=key.private_pem, algorithm="ES256",
        key_id="k1",
    )  # fmt: skip


def _report(receiver: OpaReceiver, predicate, after: int = 0):
    """The first report (from the ``after``-th on) that ``predicate`` accepts."""
    return wait_for(
        lambda: next((s for s in receiver.snapshot_statuses()[after:] if predicate(s)), None),
        timeout_s=60,
        what="a status report",
    )


def test_item3_item4_bundle_status_and_decision_logs_through_a_bundle_service(
    start_sidecar, tools, tmp_path, receiver
):
    key, wrong = KeyPair("ec"), KeyPair("ec")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with BundleServer() as server:
        bundle = bundle_config(
            server.url,
            tmp_path,
            signing={"keyid": "k1"},
            keys={"k1": {"key": key.public_pem, "algorithm": "ES256"}},
            source={"polling": {"min_delay_seconds": 1, "max_delay_seconds": 1}},
        )
        bundle["services"]["control"] = {
            "url": receiver.url,
            "credentials": {"bearer": {"token_path": str(token)}},
        }
        policy = {
            "bundle": bundle,
            "timeout_ms": 10_000,
            "status": {"service": "control"},
            "decision_logs": {
                "service": "control",
                "reporting": {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1},
            },
        }
        running = start_sidecar(tools.url, policy=policy)

        # Nothing published yet: the failed download is reported, no active revision.
        report = _report(receiver, lambda s: "code" in s["bundles"].get("authz", {}))
        assert "active_revision" not in report["bundles"]["authz"]

        server.publish(PATH, _bundle(tmp_path, "A", key))
        report = _report(
            receiver,
            lambda s: (
                s["bundles"]["authz"].get("active_revision") == "rev-A"
                and "code" not in s["bundles"]["authz"]
            ),
        )
        authz = report["bundles"]["authz"]
        assert OPA_BUNDLE_ALWAYS <= set(authz) <= OPA_BUNDLE_KEYS
        assert authz["last_successful_activation"] != "0001-01-01T00:00:00Z"

        with running.client() as client:
            decision = client.check("tickets.get", {"id": "1"})
        assert decision.policy_revision == "rev-A"
        event = wait_for(
            lambda: next(
                (e for e in receiver.snapshot_events() if e["request_id"] == decision.decision_id),
                None,
            ),
            what="the decision's event",
        )
        assert event["bundles"] == {"authz": {"revision": "rev-A"}}
        assert "revision" not in event  # OPA's deprecated field, when bundles are known
        record = next(
            r for r in audit_lines(running.audit_path) if r["decision_id"] == decision.decision_id
        )
        assert record["policy"]["revision"] == "rev-A"

        # A bundle signed with another key: rejected, reported; rev-A keeps serving.
        seen = len(receiver.snapshot_statuses())
        server.publish(PATH, _bundle(tmp_path, "B", wrong))
        report = _report(receiver, lambda s: "code" in s["bundles"]["authz"], after=seen)
        authz = report["bundles"]["authz"]
        assert authz["active_revision"] == "rev-A"
        assert authz["code"] == "bundle_error" and authz["errors"]
        assert running.sidecar.engine.revision == "rev-A"

        # Every report and upload carried the service's bearer token (never in a body).
        assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, h, _ in receiver.requests)
        assert TOKEN not in str(receiver.snapshot_statuses()) + str(receiver.snapshot_events())
        text = requests.get(
            f"http://127.0.0.1:{running.sidecar.admin_port}/metrics", timeout=10
        ).text
        assert re.search(
            r'agent_sidecar_policy_bundle_active\{bundle="authz",revision="rev-A"\} 1', text
        )
