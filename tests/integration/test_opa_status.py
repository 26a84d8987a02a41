"""Issue 27 deliverable 3: each revision change and failure reported to a real status
receiver in OPA's status API format, exposed in /metrics, and the revision in every audit
record."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sidecar.policy.bundle.status import BundleStatusTracker
from sidecar.policy.export.service import Service
from sidecar.policy.export.settings import StatusSettings
from sidecar.policy.export.status import StatusReporter
from tests.conftest import audit_lines
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for
from tests.support.running import ROOT

# OPA's status report (open-policy-agent/opa v1/plugins/status/plugin.go, UpdateRequestV1):
# labels, bundle (deprecated), bundles, discovery, metrics, plugins.
OPA_REPORT_KEYS = {"labels", "bundle", "bundles", "discovery", "metrics", "plugins"}
# Each bundle (v1/plugins/bundle/status.go, Status): the times are never omitted.
OPA_BUNDLE_KEYS = {
    "last_successful_download", "last_successful_activation", "last_request",
    "last_successful_request", "metrics", "type", "name", "code", "message",
    "active_revision", "http_code", "errors", "size",
}  # fmt: skip
OPA_BUNDLE_ALWAYS = {
    "name", "last_successful_download", "last_successful_activation", "last_request",
    "last_successful_request",
}  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[OpaReceiver]:
    r = OpaReceiver()
    yield r
    r.stop()


def _shape(report: dict) -> None:
    assert set(report) <= OPA_REPORT_KEYS and "labels" in report
    for name, bundle in report["bundles"].items():
        assert bundle["name"] == name
        assert OPA_BUNDLE_ALWAYS <= set(bundle) <= OPA_BUNDLE_KEYS, set(bundle)


def test_item3_directory_revisions_and_rejections_are_reported(
    start_sidecar, tools, receiver, tmp_path
):
    policy_dir = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", policy_dir)
    running = start_sidecar(
        tools.url,
        policy={"dir": str(policy_dir), "reload_interval_ms": 50, "status": {"url": receiver.url}},
    )
    first = running.sidecar.engine.revision

    def latest(predicate):
        return wait_for(
            lambda: next((s for s in reversed(receiver.snapshot_statuses()) if predicate(s)), None),
            what="a status report",
        )

    report = latest(lambda s: s["bundles"]["rego"].get("active_revision") == first)
    _shape(report)
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "1"})
    assert audit_lines(running.audit_path)[-1]["policy"]["revision"] == first

    # A new revision: reported as the active one.
    (policy_dir / "agentsidecar" / "authz" / "extra.rego").write_text(
        "package agentsidecar.extra\n\nanswer := 42\n"
    )
    second = wait_for(
        lambda: running.sidecar.engine.revision != first and running.sidecar.engine.revision,
        what="the reload",
    )
    report = latest(lambda s: s["bundles"]["rego"].get("active_revision") == second)
    _shape(report)
    assert "code" not in report["bundles"]["rego"]

    # A broken revision: rejected, reported as an error, the active one still reported.
    (policy_dir / "agentsidecar" / "authz" / "broken.rego").write_text("package x\n\nthis is {")
    report = latest(lambda s: "code" in s["bundles"]["rego"])
    _shape(report)
    bundle = report["bundles"]["rego"]
    assert bundle["code"] == "bundle_error"
    assert bundle["active_revision"] == second
    assert bundle["errors"] and bundle["message"]

    text = requests.get(f"http://127.0.0.1:{running.sidecar.admin_port}/metrics", timeout=10).text
    assert re.search(
        rf'agent_sidecar_policy_bundle_active\{{bundle="rego",revision="{re.escape(second)}"\}} 1',
        text,
    ), text
    assert 'agent_sidecar_policy_bundle_errors{bundle="rego"} 1.0' in text
    assert re.search(r'agent_sidecar_policy_status_reports_total\{result="sent"\} [1-9]', text)


def test_item3_bundle_events_are_reported_and_failed_reports_retried(receiver):
    tracker = BundleStatusTracker(("authz",))
    receiver.fail(2)
    reporter = StatusReporter(
        StatusSettings(url=receiver.url), Service(receiver.url), tracker, labels={"id": "t"}
    ).start()
    try:
        tracker.request("authz")
        tracker.on_download("authz", True)
        tracker.on_activate("authz", "rev-1")
        report = wait_for(
            lambda: next(
                (
                    s
                    for s in receiver.snapshot_statuses()
                    if s["bundles"]["authz"].get("active_revision") == "rev-1"
                ),
                None,
            ),
            what="the activation reported after the failures",
        )
        _shape(report)
        assert receiver.failed == 2 and reporter.counts["failed"] >= 2
        assert report["labels"] == {"id": "t"}
        tracker.on_error("authz", "bundle_signature_invalid", "signature does not verify")
        report = wait_for(
            lambda: next(
                (s for s in receiver.snapshot_statuses() if "code" in s["bundles"]["authz"]), None
            ),
            what="the error reported",
        )
        bundle = report["bundles"]["authz"]
        assert bundle["active_revision"] == "rev-1"  # the last good revision still serves
        assert bundle["errors"] == [
            {"code": "bundle_signature_invalid", "message": "signature does not verify"}
        ]
    finally:
        reporter.close()


def test_item3_partition_name_picks_the_resource(receiver):
    tracker = BundleStatusTracker(("authz",))
    reporter = StatusReporter(
        StatusSettings(url=receiver.url, partition_name="team-a"),
        Service(receiver.url),
        tracker,
        labels={},
    ).start()
    try:
        tracker.on_activate("authz", "r")
        wait_for(lambda: any(p == "/status/team-a" for p, _, _ in receiver.requests))
    finally:
        reporter.close()


def test_item3_token_files_are_read_per_report_and_never_in_the_report(receiver, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cr3t-status-token\n")
    tracker = BundleStatusTracker(("authz",))
    reporter = StatusReporter(
        StatusSettings(url=receiver.url),
        Service(receiver.url, token_path=Path(token)),
        tracker,
        labels={},
    ).start()
    try:
        tracker.on_activate("authz", "r")
        wait_for(lambda: receiver.snapshot_statuses())
        headers = receiver.requests[-1][1]
        assert headers["Authorization"] == "Bearer s3cr3t-status-token"
        assert "s3cr3t" not in str(receiver.snapshot_statuses())
    finally:
        reporter.close()
