"""Review B2 of issue 27 (OPA status and decision logs): each finding on the exporters, against
a real receiver on loopback that parses JSON as strictly as OPA's Go receivers do."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import __version__
from sidecar.config import ConfigError
from sidecar.policy.bundle.status import BundleStatusTracker
from sidecar.policy.export.decision_logs import DecisionLogExporter
from sidecar.policy.export.mask import MaskRule
from sidecar.policy.export.service import Service, redacted_url
from sidecar.policy.export.settings import DecisionLogSettings, ReportingSettings, StatusSettings
from sidecar.policy.export.status import StatusReporter
from sidecar.policy.export.wiring import build_exports
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for
from tests.support.running import sidecar_settings

TOKEN = "s3cr3t-" + "token-value"
FAST = {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1}
COMMON: dict[str, Any] = {"result": {"effect": "allow"}, "revision": "r", "log_level": "full"}


@pytest.fixture
def receiver() -> Iterator[OpaReceiver]:
    r = OpaReceiver()
    yield r
    r.stop()


def _exporter(
    receiver: OpaReceiver, service: Service | None = None, timeout_s: float = 5.0, **reporting: Any
) -> DecisionLogExporter:
    settings = DecisionLogSettings(
        url=receiver.url, timeout_s=timeout_s, reporting=ReportingSettings(**(FAST | reporting))
    )
    return DecisionLogExporter(
        settings, service or Service(receiver.url), query="data.a.b", labels={"id": "x"}
    )


def _accounted(exporter: DecisionLogExporter) -> int:
    c = exporter.counts
    return sum(
        c[k]
        for k in (
            "sent",
            "dropped_buffer",
            "dropped_oversized",
            "dropped_rejected",
            "dropped_shutdown",
            "encoding_failures",
        )
    )


# --- 1: non-finite numbers; a batch refused for good --------------------------------------


def test_review_b2_1_non_finite_numbers_become_null_and_are_listed_in_erased(receiver):
    exporter = _exporter(receiver)
    try:
        doc = {
            "request_id": "c1",
            "action": {"name": "t", "arguments": {"n": float("inf"), "l": [1.5, float("nan")]}},
            "context": {"a/b~c": float("-inf")},
        }
        exporter.log(decision_id="poison", input_doc=doc, **COMMON)
        for i in range(3):
            exporter.log(decision_id=f"ok{i}", input_doc={"i": i}, **COMMON)
        events = wait_for(
            lambda: len(e := receiver.snapshot_events()) >= 4 and e, what="all four events"
        )
        by_id = {e["decision_id"]: e for e in events}
        poison = by_id["poison"]
        assert poison["input"]["action"]["arguments"] == {"n": None, "l": [1.5, None]}
        assert poison["input"]["context"] == {"a/b~c": None}
        assert sorted(poison["erased"]) == [
            "/input/action/arguments/l/1",
            "/input/action/arguments/n",
            "/input/context/a~1b~0c",
        ]
        assert receiver.rejected == 0
        assert exporter.counts["upload_failures"] == 0
    finally:
        exporter.close()


def test_review_b2_1_a_malformed_body_is_refused_by_the_strict_receiver(receiver):
    """The receiver is as strict as OPA's: what the old exporter sent is answered 400."""
    import gzip
    import json

    import requests

    body = gzip.compress(json.dumps([{"x": float("inf")}]).encode())
    answer = requests.post(
        f"{receiver.url}/logs", data=body, headers={"Content-Encoding": "gzip"}, timeout=10
    )
    assert answer.status_code == 400 and receiver.rejected == 1


@pytest.mark.parametrize("status", [400, 413, 422])
def test_review_b2_1_a_batch_refused_for_good_is_dropped_and_counted(receiver, status):
    exporter = _exporter(receiver)
    try:
        receiver.fail(1, status=status)
        for i in range(3):
            exporter.log(decision_id=f"r{i}", input_doc={"i": i}, **COMMON)
        wait_for(lambda: exporter.counts["dropped_rejected"] == 3, what="the batch dropped")
        exporter.log(decision_id="after", input_doc={}, **COMMON)
        wait_for(lambda: receiver.snapshot_events(), what="the next batch delivered")
        assert [e["decision_id"] for e in receiver.snapshot_events()] == ["after"]
        assert receiver.failed == 1  # never sent again
        assert exporter.counts["upload_failures"] == 0
    finally:
        exporter.close()


@pytest.mark.parametrize("status", [408, 429, 503])
def test_review_b2_1_a_transient_refusal_is_retried(receiver, status):
    exporter = _exporter(receiver)
    try:
        receiver.fail(1, status=status)
        exporter.log(decision_id="kept", input_doc={}, **COMMON)
        wait_for(lambda: receiver.snapshot_events(), what="delivery on the retry")
        assert exporter.counts["upload_failures"] == 1
        assert exporter.counts["dropped_rejected"] == 0
    finally:
        exporter.close()


# --- 2: the upload limit is on the compressed body -----------------------------------------


def test_review_b2_2_the_upload_limit_is_on_the_compressed_body(receiver):
    exporter = _exporter(receiver, upload_size_limit_bytes=1024)
    try:
        exporter.log(decision_id="compressible", input_doc={"blob": "x" * 20_000}, **COMMON)
        exporter.log(
            decision_id="random", input_doc={"blob": secrets.token_urlsafe(3000)}, **COMMON
        )
        for i in range(60):
            exporter.log(decision_id=f"small{i}", input_doc={"i": i, "pad": "y" * 40}, **COMMON)
        wait_for(lambda: len(receiver.snapshot_events()) >= 61, what="61 events")
        ids = {e["decision_id"] for e in receiver.snapshot_events()}
        assert "compressible" in ids and "random" not in ids
        assert exporter.counts["dropped_oversized"] == 1
        assert all(wire <= 1024 for wire, _ in receiver.sizes), receiver.sizes
        assert any(inflated > 1024 for _, inflated in receiver.sizes)
    finally:
        exporter.close()


# --- 3: any exception is one round's failure; BOM and non-Latin-1 tokens --------------------


def test_review_b2_3_a_bom_is_stripped_and_a_bad_token_never_kills_the_threads(
    receiver, tmp_path: Path, caplog
):
    token = tmp_path / "token"
    token.write_text("\ufeff" + TOKEN + "\n", encoding="utf-8")  # as Notepad saves it
    service = Service(receiver.url, token_path=token)
    exporter = _exporter(receiver, service)
    tracker = BundleStatusTracker(("b",))
    reporter = StatusReporter(StatusSettings(url=receiver.url), service, tracker, labels={})
    reporter.start()
    try:
        with caplog.at_level(logging.DEBUG):
            exporter.log(decision_id="bom", input_doc={}, **COMMON)
            tracker.on_activate("b", "r0")
            wait_for(lambda: receiver.snapshot_events(), what="delivery with the BOM stripped")
            wait_for(lambda: receiver.snapshot_statuses(), what="a status report")
            sent = [h.get("Authorization") for _, h, _ in receiver.requests]
            assert set(sent) == {f"Bearer {TOKEN}"}
            # A token no header can carry: each round fails, counted; the threads live on.
            token.write_text("t\u00f8ken\u20ac" + TOKEN, encoding="utf-8")
            exporter.log(decision_id="held", input_doc={}, **COMMON)
            tracker.on_activate("b", "r1")
            wait_for(lambda: exporter.counts["upload_failures"] >= 2, what="failed rounds")
            wait_for(lambda: reporter.counts["failed"] >= 2, what="failed reports")
            assert exporter._thread.is_alive() and reporter._thread.is_alive()
            token.write_text(TOKEN, encoding="utf-8")
            wait_for(
                lambda: "held" in {e["decision_id"] for e in receiver.snapshot_events()},
                what="the held batch delivered once the token is fixed",
            )
            wait_for(
                lambda: any(
                    s["bundles"]["b"].get("active_revision") == "r1"
                    for s in receiver.snapshot_statuses()
                ),
                what="the report delivered once the token is fixed",
            )
        logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
        assert "not Latin-1" in logged  # the reason, named
        assert TOKEN not in logged and "t\u00f8ken" not in logged  # never the token
    finally:
        reporter.close()
        exporter.close()


# --- 6: a bounded close; nothing left uncounted ---------------------------------------------


def test_review_b2_6_close_is_bounded_makes_no_fresh_post_and_counts_leftovers(receiver):
    receiver.hang()
    exporter = _exporter(receiver, timeout_s=60)
    exporter.log(decision_id="first", input_doc={}, **COMMON)
    wait_for(lambda: receiver.held >= 1, what="the first POST held")
    for i in range(10):
        exporter.log(decision_id=f"e{i}", input_doc={}, **COMMON)
    closer = threading.Thread(target=exporter.close, kwargs={"budget_s": 0.5})
    closer.start()
    closer.join(30)  # a bound, not a measurement: the old close waited 2 x timeout_s = 120 s
    assert not closer.is_alive(), "close() waited on the hung receiver"
    assert len(receiver.requests) == 1  # no fresh POST after the join timed out
    assert exporter.counts["dropped_shutdown"] == 11
    assert exporter.buffered_bytes == 0
    exporter.log(decision_id="late", input_doc={}, **COMMON)  # after close: a counted no-op
    assert exporter.counts["events"] == 12 and exporter.counts["dropped_shutdown"] == 12
    assert exporter.buffered_bytes == 0
    assert _accounted(exporter) == exporter.counts["events"]
    receiver.release()  # the abandoned POST now succeeds: moved from dropped to sent
    wait_for(lambda: exporter.counts["sent"] == 1, what="the late delivery counted")
    assert exporter.counts["dropped_shutdown"] == 11
    assert _accounted(exporter) == exporter.counts["events"]


def test_review_b2_6_close_delivers_what_is_buffered_when_the_receiver_answers(receiver):
    exporter = _exporter(receiver, min_delay_seconds=600, max_delay_seconds=600)
    for i in range(5):
        exporter.log(decision_id=f"e{i}", input_doc={}, **COMMON)
    exporter.close()
    assert len(receiver.snapshot_events()) == 5
    assert exporter.counts["sent"] == 5 and exporter.counts["dropped_shutdown"] == 0


def test_review_b2_6_the_sidecar_seals_its_audit_without_waiting_on_a_hung_receiver(
    start_sidecar, tools, receiver
):
    receiver.hang()
    policy = {
        "decision_logs": {"url": receiver.url, "timeout_s": 60, "reporting": FAST},
        "status": {"url": receiver.url, "timeout_s": 60},
    }
    running = start_sidecar(tools.url, policy=policy)
    exports = running.sidecar.calls.decider.on_decision.__self__
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "1"})
    wait_for(lambda: receiver.held >= 2, what="both exports' POSTs held")
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "2"})
    closer = threading.Thread(target=running.sidecar.close)
    closer.start()
    closer.join(30)  # a bound: the old shutdown waited 2 x 60 s before sealing the audit
    assert not closer.is_alive(), "the sidecar's close waited on the hung receiver"
    assert running.sidecar.audit._file.fd == -1  # sealed and closed
    assert exports.wait_closed(30)
    assert exports.decision_logs.counts["dropped_shutdown"] >= 1


# --- 7: no credentials in export URLs or logs -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://svc:hunter2@127.0.0.1:9", "user:password"),
        ("http://svc@127.0.0.1:9", "user:password"),
        ("http://127.0.0.1:9/?token=hunter2", "query"),
        ("http://127.0.0.1:9/#hunter2", "fragment"),
    ],
    ids=["userinfo", "user", "query", "fragment"],
)
@pytest.mark.parametrize("export", ["decision_logs", "status"])
def test_review_b2_7_credentials_in_an_export_url_are_refused(tmp_path, tools, url, words, export):
    with pytest.raises(ConfigError, match=words) as refused:
        sidecar_settings(tmp_path, tools.url, policy={export: {"url": url}})
    assert "hunter2" not in str(refused.value)


def test_review_b2_7_logged_urls_carry_no_credentials():
    assert (
        redacted_url("https://u:hunter2@h.example:8443/logs?x=1#f") == "https://h.example:8443/logs"
    )
    assert redacted_url("http://[::1]:9/status") == "http://[::1]:9/status"


# --- 10, 11: labels and the active-revision gauge -------------------------------------------


def test_review_b2_10_configured_labels_never_replace_id_and_version(tmp_path, tools, receiver):
    settings = sidecar_settings(
        tmp_path,
        tools.url,
        policy={
            "labels": {"id": "forged", "version": "0.0.0", "team": "support"},
            "decision_logs": {"url": receiver.url, "reporting": FAST},
        },
    )
    exports = build_exports(settings.policy, revision=lambda: "r", failing=lambda: False)
    try:
        labels = exports.decision_logs._labels
        assert labels["team"] == "support"
        assert labels["id"] != "forged" and labels["version"] == __version__
    finally:
        exports.close()


def test_review_b2_10_labels_are_checked(tmp_path, tools, receiver):
    settings = sidecar_settings(
        tmp_path, tools.url, policy={"decision_logs": {"url": receiver.url, "reporting": FAST}}
    )
    bad = dataclasses.replace(settings.policy, labels={"": "x"})
    with pytest.raises(ValueError, match="labels"):
        build_exports(bad, revision=lambda: "r", failing=lambda: False)


def test_review_b2_11_no_active_revision_no_active_series(tmp_path, tools):
    from prometheus_client import CollectorRegistry, generate_latest

    settings = sidecar_settings(tmp_path, tools.url)
    tracker = BundleStatusTracker(("authz",))
    exports = build_exports(
        settings.policy, revision=lambda: "", failing=lambda: False, tracker=tracker
    )
    registry = CollectorRegistry()
    registry.register(exports.collector())
    text = generate_latest(registry).decode()
    assert "agent_sidecar_policy_bundle_active{" not in text
    tracker.on_activate("authz", "rev-A")
    text = generate_latest(registry).decode()
    assert 'agent_sidecar_policy_bundle_active{bundle="authz",revision="rev-A"} 1.0' in text


# --- 12: mask pointers escaped as Go's url.PathEscape ---------------------------------------


@pytest.mark.parametrize(
    ("key", "go"),
    [
        # url.PathEscape(key) in Go 1.22 (net/url shouldEscape, encodePathSegment)
        ("a!b'c(d)*e", "a%21b%27c%28d%29%2Ae"),
        ("$&+=:@", "$&+=:@"),
        ("x;y,z?w", "x%3By%2Cz%3Fw"),
        ("sp ace~-._", "sp%20ace~-._"),
        ("ü", "%C3%BC"),
    ],
)
def test_review_b2_12_mask_pointers_are_escaped_as_go_does(key, go):
    assert MaskRule(f"/input/{key}").pointer == f"/input/{go}"


# --- 13: the arguments under each log level, pinned -----------------------------------------

SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a GitHub token shape the redactor knows


@pytest.mark.parametrize("level", ["full", "redacted", "metadata"])
def test_review_b2_13_arguments_follow_the_pinned_log_level(receiver, level):
    exporter = _exporter(receiver)
    try:
        doc = {"request_id": "c", "action": {"name": "t", "arguments": {"note": SECRET}}}
        exporter.log(
            decision_id=level, input_doc=doc, result={"effect": "allow"}, revision="r",
            log_level=level,
        )  # fmt: skip
        [event] = wait_for(lambda: receiver.snapshot_events(), what="the event")
        action = event["input"]["action"]
        if level == "full":
            assert action["arguments"] == {"note": SECRET} and "erased" not in event
        elif level == "redacted":
            assert SECRET not in json.dumps(event) and "note" in action["arguments"]
        else:
            assert "arguments" not in action
            assert event["erased"] == ["/input/action/arguments"]
    finally:
        exporter.close()
