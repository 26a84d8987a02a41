"""Tamper-evident audit and observability, on real logs written by real sidecars."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest
import requests

from examples.demo.tools_server import Reply, ToolServer
from sidecar.audit import AuditLog, FileKeySigner, canonical, digest
from sidecar.client import PolicyDenied, SidecarClient, StepUpRequired, Unavailable
from tests.conftest import all_audit_lines, audit_lines
from tests.support.cli import cli
from tests.support.settle import poll

# --- a real log, then every way of tampering with it ---------------------------------------


@pytest.fixture
def sealed_log(start_sidecar, tools, tmp_path) -> Path:
    running = start_sidecar(tools.url, audit={"checkpoint_every": 4})
    with running.client() as client:
        for i in range(9):
            client.call_tool("tickets.get", {"id": str(i)})
        with pytest.raises(PolicyDenied):
            client.call_tool("tickets.close", {"id": "1"})
    running.stop()  # a clean shutdown writes the final checkpoint
    return running.audit_path


def _verify(log: Path, *extra: str):
    key = log.parent / "audit-signing.pub"
    return cli("audit", "verify", str(log), "--key", str(key), *extra)


def _rewrite(log: Path, mutate) -> None:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    lines = mutate(lines)
    log.write_text("".join(canonical(doc).decode() + "\n" for doc in lines))


def _records(lines):
    return [doc for doc in lines if doc["type"] != "checkpoint"]


def test_a_clean_log_verifies(sealed_log):
    done = _verify(sealed_log, "--require-sealed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(": intact")
    records = _records(all_audit_lines(sealed_log))
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert "signed through seq" in done.stdout


def test_an_edited_field_is_found(sealed_log):
    def edit(lines):
        _records(lines)[3]["decision"]["effect"] = "deny"  # seq 4
        return lines

    _rewrite(sealed_log, edit)
    done = _verify(sealed_log)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "BAD: seq 4: edited (its hash does not match its content)"


def test_a_deleted_record_is_found(sealed_log):
    _rewrite(
        sealed_log,
        lambda lines: [d for d in lines if d.get("seq") != 5 or d["type"] == "checkpoint"],
    )
    done = _verify(sealed_log)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("BAD: seq 5: missing (deleted)")


def test_swapped_records_are_found(sealed_log):
    def swap(lines):
        i = next(n for n, d in enumerate(lines) if d.get("seq") == 2)
        j = next(n for n, d in enumerate(lines) if d.get("seq") == 3)
        lines[i], lines[j] = lines[j], lines[i]
        return lines

    _rewrite(sealed_log, swap)
    done = _verify(sealed_log)
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first.startswith("BAD: seq 2") or first.startswith("BAD: seq 3"), first


def test_truncation_after_a_checkpoint_is_found(sealed_log):
    # Cut the log (and the checkpoints in it) back to seq 6; the checkpoint file keeps the rest.
    _rewrite(sealed_log, lambda lines: [d for d in lines if d["seq"] <= 6])
    done = _verify(sealed_log)
    assert done.returncode == 1
    assert any(
        "truncated: a signed checkpoint covers seq" in line and "ends at seq 6" in line
        for line in done.stdout.splitlines()
    )


def test_resealing_the_tail_without_the_key_is_found(sealed_log):
    def reseal(lines):
        records = _records(lines)
        records[4]["action"]["arguments"] = {"log": "full", "value": {"id": "forged"}}
        prev = records[3]["hash"]
        for record in records[4:]:  # recompute every hash after the edit: a consistent chain
            record["prev_hash"] = prev
            record["hash"] = digest(record)
            prev = record["hash"]
        return lines

    _rewrite(sealed_log, reseal)
    done = _verify(sealed_log)
    assert done.returncode == 1
    assert any(re.match(r"BAD: seq \d+: re-sealed", line) for line in done.stdout.splitlines())
    assert not any("edited" in line for line in done.stdout.splitlines())


def test_a_forged_checkpoint_signature_is_found(sealed_log, tmp_path):
    other = FileKeySigner(tmp_path / "other" / "key.pem")  # a key that is not the sidecar's
    import base64

    def forge(lines):
        for doc in lines:
            if doc["type"] == "checkpoint":
                body = canonical(
                    {"seq": doc["seq"], "head_hash": doc["head_hash"], "time_ns": doc["time_ns"]}
                )
                doc["signature"] = base64.b64encode(other.sign(body)).decode()
        return lines

    _rewrite(sealed_log, forge)
    (sealed_log.parent / "audit.log.checkpoints").unlink()
    done = _verify(sealed_log)
    assert done.returncode == 1
    assert "signature does not verify" in done.stdout


# --- strict and best-effort modes -----------------------------------------------------------


def test_strict_mode_with_a_full_disk_fails_closed_before_relay(start_sidecar, tools):
    running = start_sidecar(tools.url, audit={"path": "/dev/full", "mode": "strict"})
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "audit_unavailable"
    assert tools.received == []  # the write-ahead record failed: nothing was relayed
    assert running.sidecar.audit.counts["failed"] >= 1


def test_best_effort_mode_never_fails_calls_and_counts_failures(start_sidecar, tools):
    running = start_sidecar(tools.url, audit={"path": "/dev/full", "mode": "best_effort"})
    with running.client() as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200
    poll(lambda: running.sidecar.audit.counts["failed"] >= 1, what="a counted write failure")


def test_best_effort_drops_the_oldest_when_full_and_counts_them(tmp_path):
    log = AuditLog(
        tmp_path / "a.log", mode="best_effort", buffer=2, signer=FileKeySigner(tmp_path / "k.pem")
    )
    with log._lock:  # the writer is stuck (a slow disk): the queue fills up
        log.write({"type": "call", "decision_id": "0"})
        # Barrier: the writer has taken record 0 and is stuck writing it (on this lock).
        poll(lambda: not log._queue, what="the writer taking the first record")
        for i in range(1, 6):
            log.write({"type": "call", "decision_id": str(i)})
    log.close()
    assert log.counts["dropped"] == 3  # 1..5 into a queue of 2: the three oldest dropped
    written = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    calls = [d for d in written if d["type"] == "call"]
    assert [d["seq"] for d in calls] == list(range(1, len(calls) + 1))  # no gaps in the chain
    assert calls[-1]["decision_id"] == "5"  # the newest were kept


def test_kill_9_leaves_a_verifiable_log_with_every_relayed_call(tmp_path):
    from tests.support.running import serve_process

    with ToolServer() as upstream:
        config = {
            "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"},
            "policy": {"dir": str(Path(__file__).resolve().parents[2] / "rego")},
            "audit": {"path": str(tmp_path / "audit.log"), "mode": "strict", "checkpoint_every": 5},
            "targets": {"tickets": {"base_url": upstream.url}},
            "tools": {
                "tickets.get": {
                    "target": "tickets",
                    "operation": "read",
                    "method": "GET",
                    "path": "/tickets/{id}",
                }
            },
        }
        with serve_process(tmp_path, config) as (proc, address):
            stop = threading.Event()

            def stream() -> None:
                with SidecarClient(address, timeout_s=5) as client:
                    i = 0
                    while not stop.is_set():
                        try:
                            client.call_tool("tickets.get", {"id": str(i)})
                        except Exception:
                            return  # the sidecar is gone
                        i += 1

            threads = [threading.Thread(target=stream) for _ in range(3)]
            for thread in threads:
                thread.start()
            poll(lambda: len(upstream.received) >= 40, what="40 relayed calls")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            for thread in threads:
                thread.join(10)
        relayed = {r.headers["x-request-id"] for r in upstream.received}
    done = cli(
        "audit", "verify", str(tmp_path / "audit.log"), "--key", str(tmp_path / "audit-signing.pub")
    )
    assert done.returncode == 0, done.stdout
    logged = {
        d["decision_id"]
        for d in all_audit_lines(tmp_path / "audit.log")
        if d["type"] in ("intent", "call")
    }
    assert relayed and relayed <= logged  # no allowed-and-relayed call is missing


def test_rotation_keeps_the_chain_across_files(start_sidecar, tools):
    running = start_sidecar(
        tools.url, audit={"max_bytes": 8000, "keep_files": 100, "checkpoint_every": 5}
    )
    with running.client() as client:
        for i in range(15):
            client.call_tool("tickets.get", {"id": str(i)})
    running.stop()
    rotations = sorted(running.audit_path.parent.glob("audit.log.*[0-9]"))
    assert len(rotations) >= 2
    done = _verify(running.audit_path, "--require-sealed")
    assert done.returncode == 0, done.stdout
    summary = done.stdout.splitlines()[-1]
    assert summary.startswith("30 records")  # 15 calls, each with its write-ahead intent
    assert "note" not in done.stdout  # every file present: the chain starts at seq 1


def test_http_sink_delivers_opa_decision_log_events_with_retries(start_sidecar, tools):
    attempts: list[int] = []

    def collect(request):
        attempts.append(len(request.json()))
        return Reply(503 if len(attempts) == 1 else 204, b"")  # the first POST fails

    with ToolServer({("POST", "/logs"): collect}) as collector:
        running = start_sidecar(
            tools.url,
            audit={"http_url": f"{collector.url}/logs", "http_batch": 50, "http_interval_s": 0.2},
        )
        with running.client() as client:
            client.call_tool("tickets.get", {"id": "1"})
            task = client.start_task("refunds").task_id
            client.check("payments.refund", {"amount": 500}, task_id=task)
        running.stop()
        events = [e for r in collector.received[1:] for e in r.json()]
    assert len(attempts) >= 2 and attempts[0] == attempts[1]  # the same batch, retried
    calls = [e for e in events if e["agent_sidecar"]["type"] == "call"]
    assert {e["decision_id"] for e in calls} == {
        r["decision_id"] for r in audit_lines(running.audit_path)
    }
    event = calls[-1]
    assert event["path"] == "agentsidecar/authz/decision"
    assert event["result"]["effect"] == "step_up"
    assert event["requested_by"] == "spiffe://demo.example/agent/support"
    assert set(event) >= {"decision_id", "path", "input", "result", "timestamp", "labels"}


# --- query, metrics, traces ------------------------------------------------------------------


def test_audit_show_answers_who_did_what(start_sidecar, tools):
    running = start_sidecar(tools.url)
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "1"})
        task = client.start_task("refunds").task_id
        with pytest.raises(StepUpRequired):
            client.call_tool("payments.refund", {"amount": 500}, task_id=task, wait=False)
    done = cli("audit", "show", str(running.audit_path), "--effect", "step_up")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "SUBJECT", "TOOL", "EFFECT"]
    assert "payments.refund" in lines[1] and "step_up" in lines[1]
    assert "needs approval when amount is above 100" in lines[1]
    assert lines[-1] == "1 calls"
    everything = cli("audit", "show", str(running.audit_path), "--since", "1h")
    assert everything.stdout.splitlines()[-1] == "2 calls"


def test_metrics_after_a_mixed_workload(start_sidecar, tmp_path):
    routes = {("GET", "/tickets/"): lambda r: Reply(503, {"error": "down"})}
    with ToolServer(routes) as upstream:
        running = start_sidecar(upstream.url)
        with running.client() as client:
            task = client.start_task("workload").task_id
            for call in (
                lambda: client.call_tool("tickets.get", {"id": "1"}),
                lambda: client.call_tool("tickets.close", {"id": "1"}, task_id=task),
                lambda: client.call_tool(
                    "payments.refund", {"amount": 500}, task_id=task, wait=False
                ),
            ):
                with contextlib.suppress(Exception):  # every outcome is part of the workload
                    call()
            client.check("kb.search", {"q": "x"})
        port = running.sidecar.admin_port
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    expected = [
        'agent_sidecar_decisions_total{code="ok",effect="allow"} 2.0',
        'agent_sidecar_decisions_total{code="policy_deny",effect="deny"} 1.0',
        'agent_sidecar_decisions_total{code="approval_required",effect="step_up"} 1.0',
        'agent_sidecar_calls_total{code="upstream_error",rpc="CallTool"} 1.0',
        'agent_sidecar_upstream_errors_total{code="upstream_error",target="tickets"} 1.0',
        'agent_sidecar_relay_seconds_count{target="tickets"} 1.0',
        "agent_sidecar_decision_seconds_count 4.0",
        'agent_sidecar_audit_records_total{result="written"}',
        'agent_sidecar_audit_records_total{result="dropped"} 0.0',
        "agent_sidecar_pending_approvals 1.0",
        "agent_sidecar_state_available 1.0",
        'agent_sidecar_calls_total{code="ok",rpc="StartTask"} 1.0',
        "agent_sidecar_fail_open_total 0.0",
        'agent_sidecar_policy_info{engine="embedded",revision="',
    ]
    for series in expected:
        assert series in text, series
    assert not re.search(r"[0-9A-HJKMNP-TV-Z]{26}", text)  # no decision ids as labels


def test_svid_expiry_is_a_metric_in_pod_mode(start_sidecar, tools, authority, tmp_path):
    from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer

    with DevWorkloadApiServer(
        DevWorkloadApi(authority, "spiffe://demo.example/agent/support"), tmp_path / "wl.sock"
    ) as api:
        running = start_sidecar(
            tools.url, identity={"mode": "pod", "socket": f"unix://{api.socket_path}"}
        )
        assert running.sidecar.identity.wait_ready(10)
        text = requests.get(
            f"http://127.0.0.1:{running.sidecar.admin_port}/metrics", timeout=5
        ).text
    [line] = [x for x in text.splitlines() if x.startswith("agent_sidecar_svid_expiry_seconds ")]
    assert 3500 < float(line.split()[1]) <= 3600


def test_trace_context_reaches_the_upstream_spans_and_the_audit(start_sidecar, tools):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    running = start_sidecar(tools.url)
    import grpc

    from sidecar._proto.agentsidecar.v1 import sidecar_pb2

    with grpc.insecure_channel(running.address) as channel:
        channel.unary_unary(
            "/agentsidecar.v1.Sidecar/CallTool",
            request_serializer=sidecar_pb2.CallToolRequest.SerializeToString,
            response_deserializer=sidecar_pb2.CallToolResponse.FromString,
        )(
            sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "1"}'),
            metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),),
        )
    header = tools.received[0].headers["traceparent"]
    version, upstream_trace, span, flags = header.split("-")
    assert (version, upstream_trace, flags) == ("00", trace_id, "01") and span != parent
    spans = {
        s.name: s
        for s in exporter.get_finished_spans()
        if format(s.context.trace_id, "032x") == trace_id
    }
    assert set(spans) >= {"attest", "decide", "relay"}
    assert format(spans["relay"].context.span_id, "016x") == span
    assert format(spans["decide"].parent.span_id, "016x") == parent
    assert audit_lines(running.audit_path)[0]["trace_id"] == trace_id


def test_retention_drops_the_oldest_files_and_verify_says_so(start_sidecar, tools):
    running = start_sidecar(tools.url, audit={"max_bytes": 3000, "keep_files": 2})
    with running.client() as client:
        for i in range(10):
            client.call_tool("tickets.get", {"id": str(i)})
    running.stop()
    assert len(sorted(running.audit_path.parent.glob("audit.log.[0-9]*"))) == 2
    done = _verify(running.audit_path)
    assert done.returncode == 0, done.stdout  # what is kept is intact
    assert "the log starts at seq" in done.stdout and "earlier files not given" in done.stdout
