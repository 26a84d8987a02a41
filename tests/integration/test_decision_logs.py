"""Issue 27 deliverable 4: every decision also exported in OPA's decision-log format, to a
real receiver (aiohttp on loopback, gzip decoded) from a real sidecar making real calls."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sidecar.client import PolicyDenied
from sidecar.config import ConfigError
from tests.conftest import audit_lines
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for
from tests.support.running import sidecar_settings

# OPA's EventV1 JSON keys (open-policy-agent/opa v1/plugins/logs/plugin.go, ``type EventV1``):
# labels, decision_id, trace_id, span_id, revision, bundles, path, query, input, result,
# mapped_result, nd_builtin_cache, erased, masked, error, requested_by, timestamp, metrics,
# req_id, request_context. ``labels``, ``decision_id`` and ``timestamp`` are never omitted.
OPA_EVENT_KEYS = {
    "labels", "decision_id", "trace_id", "span_id", "revision", "bundles", "path", "query",
    "input", "result", "mapped_result", "nd_builtin_cache", "erased", "masked", "error",
    "requested_by", "timestamp", "metrics", "req_id", "request_context",
}  # fmt: skip
# Ours, documented (docs/policy-engines.md): the call's id, which its audit record carries as
# decision_id. One call may make several decisions, each with a decision_id of its own.
OUR_EVENT_KEYS = {"request_id"}
ALWAYS = {"labels", "decision_id", "timestamp", "request_id"}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a GitHub token shape the redactor knows


@pytest.fixture
def receiver() -> Iterator[OpaReceiver]:
    r = OpaReceiver()
    yield r
    r.stop()


def _logs(url: str, **extra: Any) -> dict[str, Any]:
    reporting = {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1} | extra.pop("reporting", {})
    return {"url": url, "reporting": reporting, **extra}


def _start(start_sidecar, tools, **decision_logs: Any):
    url = decision_logs.pop("url")
    policy = {"decision_logs": _logs(url, **decision_logs)}
    return start_sidecar(tools.url, policy=policy)


def _exporter(running):
    return running.sidecar.calls.decider.on_decision.__self__.decision_logs


def test_item4_events_are_in_opas_shape_and_join_the_audit_record(start_sidecar, tools, receiver):
    running = _start(start_sidecar, tools, url=receiver.url)
    answered = []  # the decision ids the responses carry
    with running.client() as client:
        for i in range(3):
            answered.append(client.call_tool("tickets.get", {"id": str(i)}).decision.decision_id)
        with pytest.raises(PolicyDenied) as denied:
            client.call_tool("tickets.close", {"id": "1"})
        answered.append(denied.value.decision_id)
    records = audit_lines(running.audit_path)
    ids = {r["decision_id"] for r in records if r.get("decision")}
    events = wait_for(
        lambda: (e := receiver.snapshot_events()) and {x["request_id"] for x in e} >= ids and e,
        what="every decision exported",
    )
    assert len(ids) == 4
    assert set(answered) == ids  # response, audit record and event share the id
    by_id = {e["request_id"]: e for e in events}
    assert len({e["decision_id"] for e in events}) == len(events)  # each its own
    for record in records:
        if not record.get("decision"):
            continue
        event = by_id[record["decision_id"]]
        assert set(event) <= OPA_EVENT_KEYS | OUR_EVENT_KEYS, set(event) - OPA_EVENT_KEYS
        assert set(event) >= ALWAYS
        assert event["path"] == "agentsidecar/authz/decision"
        assert event["revision"] == record["policy"]["revision"]
        assert event["result"]["effect"] == record["decision"]["effect"]
        assert event["result"]["code"] == record["decision"]["code"]
        assert event["input"]["request_id"] == record["decision_id"]
        assert RFC3339.fullmatch(event["timestamp"]), event["timestamp"]
        assert set(event["labels"]) >= {"id", "version"}
        assert event["requested_by"] == "spiffe://demo.example/agent/support"
    # Every upload gzip-compressed JSON, as OPA's (the receiver asserts Content-Encoding):
    # fewer bytes on the wire than the JSON they carry.
    assert all(h.get("Content-Type") == "application/json" for p, h, _ in receiver.requests)
    assert all(0 < wire < inflated for wire, inflated in receiver.sizes), receiver.sizes


def test_item4_masking_follows_opa_and_arguments_follow_the_log_obligation(
    start_sidecar, tools, receiver
):
    running = _start(
        start_sidecar,
        tools,
        url=receiver.url,
        mask=["/input/subject/claims", "/input/action/target", "/input/no/such/path"],
    )
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "7", "note": SECRET})
    event = wait_for(lambda: receiver.snapshot_events(), what="the event")[0]
    assert "claims" not in event["input"]["subject"]
    assert "target" not in event["input"]["action"]
    # OPA lists what a mask removed, and only paths that resolved (mask.go removeValue).
    assert "/input/subject/claims" in event["erased"]
    assert "/input/action/target" in event["erased"]
    assert "/input/no/such/path" not in event["erased"]
    log_level = event["result"]["obligations"]["log"]
    if log_level == "metadata":
        assert "arguments" not in event["input"]["action"]
        assert "/input/action/arguments" in event["erased"]
    # Never a secret, whatever the log level.
    assert SECRET not in json.dumps(receiver.snapshot_events())


def test_item4_a_receiver_that_is_down_never_fails_a_call_and_overflow_is_counted(
    start_sidecar, tools, receiver
):
    down = receiver.url
    receiver.stop()  # its port now refuses connections
    running = _start(
        start_sidecar,
        tools,
        url=down,
        reporting={"buffer_size_limit_bytes": 4096, "upload_size_limit_bytes": 2048},
    )
    with running.client() as client:
        for i in range(25):
            assert client.call_tool("tickets.get", {"id": str(i)}).status == 200
    exporter = _exporter(running)
    assert exporter.counts["events"] == 25
    assert exporter.counts["dropped_buffer"] > 0
    assert exporter.buffered_bytes <= 4096
    wait_for(lambda: exporter.counts["upload_failures"] > 0, what="a failed upload")
    text = requests.get(f"http://127.0.0.1:{running.sidecar.admin_port}/metrics", timeout=10).text
    dropped = re.search(r'agent_sidecar_decision_logs_total\{result="dropped_buffer"\} (\S+)', text)
    assert dropped and float(dropped.group(1)) > 0
    assert "agent_sidecar_decision_logs_upload_failures_total" in text


def test_item4_a_receiver_that_hangs_never_blocks_a_call(start_sidecar, tools, receiver):
    receiver.hang()
    running = _start(
        start_sidecar,
        tools,
        url=receiver.url,
        timeout_s=60,
        reporting={"buffer_size_limit_bytes": 4096, "upload_size_limit_bytes": 2048},
    )
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "first"})
        wait_for(lambda: receiver.held >= 1, what="an upload held by the receiver")
        # The upload thread is stuck in a POST: calls go on, the buffer overflows, counted.
        for i in range(25):
            assert client.call_tool("tickets.get", {"id": str(i)}).status == 200
    exporter = _exporter(running)
    assert exporter.counts["dropped_buffer"] > 0
    receiver.release()
    wait_for(lambda: receiver.snapshot_events(), what="delivery once released")


def test_item4_failed_uploads_are_retried_with_backoff_then_delivered_once(
    start_sidecar, tools, receiver
):
    receiver.fail(3)
    running = _start(start_sidecar, tools, url=receiver.url)
    with running.client() as client:
        for i in range(5):
            client.call_tool("tickets.get", {"id": str(i)})
    ids = {r["decision_id"] for r in audit_lines(running.audit_path)}
    wait_for(
        lambda: {e["request_id"] for e in receiver.snapshot_events()} >= ids,
        what="delivery after the failures",
    )
    assert receiver.failed == 3
    assert _exporter(running).counts["upload_failures"] == 3
    ids_sent = [e["decision_id"] for e in receiver.snapshot_events()]
    assert len(ids_sent) == len(set(ids_sent)), "an event delivered twice"


def test_item4_a_service_name_must_be_a_bundle_service(tmp_path, tools):
    with pytest.raises(ConfigError, match="service"):
        sidecar_settings(
            tmp_path, tools.url, policy={"decision_logs": {"service": "x", "url": "http://a"}}
        )
    settings = sidecar_settings(tmp_path, tools.url, policy={"decision_logs": {"service": "x"}})
    from sidecar.policy.export.service import ExportError
    from sidecar.policy.export.wiring import build_exports

    with pytest.raises(ExportError, match=r"not in policy\.bundle\.services"):
        build_exports(settings.policy, revision=lambda: "", failing=lambda: False)


@pytest.mark.parametrize(
    "mask",
    ["/subject", "input/x", "", "/data/x", 7],
    ids=["prefix", "slash", "empty", "data", "int"],
)
def test_item4_a_bad_mask_is_refused(tmp_path, tools, mask):
    with pytest.raises(ConfigError, match="mask"):
        sidecar_settings(
            tmp_path, tools.url, policy={"decision_logs": {"url": "http://a", "mask": [mask]}}
        )


def _direct(receiver: OpaReceiver, **reporting: Any):
    from sidecar.policy.export.decision_logs import DecisionLogExporter
    from sidecar.policy.export.service import Service
    from sidecar.policy.export.settings import DecisionLogSettings, ReportingSettings

    limits = {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1} | reporting
    settings = DecisionLogSettings(url=receiver.url, reporting=ReportingSettings(**limits))
    return DecisionLogExporter(
        settings, Service(receiver.url), query="data.a.b", labels={"id": "x"}
    )


def _input(**arguments: Any) -> dict[str, Any]:
    return {"request_id": "d", "subject": {}, "action": {"name": "t", "arguments": arguments}}


def test_item4_an_oversized_or_unencodable_event_is_counted_and_never_raises(receiver):
    exporter = _direct(receiver, upload_size_limit_bytes=1024)
    try:
        common = {"result": {"effect": "allow"}, "revision": "r", "log_level": "full"}
        # Over the limit even compressed (random text); "x" * 5000 would fit compressed.
        big = secrets.token_urlsafe(5000)
        exporter.log(decision_id="big", input_doc=_input(blob=big), **common)
        exporter.log(decision_id="bad", input_doc=_input(raw=b"\x00bytes"), **common)
        exporter.log(decision_id="nan", input_doc=_input(n=object()), **common)
        exporter.log(decision_id="ok", input_doc=_input(a=1), **common)
        events = wait_for(lambda: receiver.snapshot_events(), what="the good event")
        assert [e["decision_id"] for e in events] == ["ok"]
        assert exporter.counts["dropped_oversized"] == 1
        assert exporter.counts["encoding_failures"] == 2
        assert events[0]["path"] == "a/b" and events[0]["input"]["action"]["arguments"] == {"a": 1}
    finally:
        exporter.close()


def test_item4_concurrent_decisions_are_each_exported_once(receiver):
    import threading

    exporter = _direct(receiver)
    try:

        def burst(n: int) -> None:
            for i in range(200):
                exporter.log(
                    decision_id=f"{n}-{i}",
                    input_doc=_input(i=i),
                    result={"effect": "allow"},
                    revision="r",
                    log_level="metadata",
                )

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: len(receiver.snapshot_events()) >= 800, what="all 800 events")
        ids = [e["decision_id"] for e in receiver.snapshot_events()]
        assert len(ids) == len(set(ids)) == 800
        # Batches respect the upload limit on the wire (OPA's upload_size_limit_bytes).
        assert all(wire <= 32768 for wire, _ in receiver.sizes)
    finally:
        exporter.close()
