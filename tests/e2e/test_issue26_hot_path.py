"""Issue 26 items 2 and 3: the pod-mode tail (full collections over the start-up heap) and
the per-call CPU of the guarded path, through ``agent-sidecar serve`` and in fresh
interpreters (``gc.freeze`` and OpenTelemetry's global provider are process-wide: never
changed in the test process itself). No duration is asserted and nothing sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from examples.demo.run import wait_serving
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.integration.test_issue26_footprint import START_S, minimal_config
from tests.support.fleet import poll

ROOT = Path(__file__).resolve().parents[2]

ALLOW = 'package agentsidecar.authz\n\ndecision := {"effect": "allow", "reasons": []}\n'
DENY = (
    "package agentsidecar.authz\n\n"
    'decision := {"effect": "deny", "reasons": ["closed after the freeze"]}\n'
)

# In the serving process only: at exit, what the collector holds frozen and the thresholds.
REPORT_HOOK = """
import atexit, gc, json, os, sys

def _report():
    if "serve" in sys.argv:
        with open(os.environ["HEAP_REPORT"], "w") as f:
            json.dump({"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}, f)

if os.environ.get("HEAP_REPORT"):
    atexit.register(_report)
"""


def _fresh(script: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def _call(address: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarStub(channel)
        try:
            stub.CallTool(
                sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "7"}'),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_item2_serve_freezes_the_start_up_heap_and_stays_correct(tmp_path, tools):
    """``serve`` moves the start-up heap out of the collector's scans once it serves; calls
    are answered and audited one record each, a policy reload after the freeze takes effect,
    and the log verifies sealed after a clean stop."""
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "policy.rego").write_text(ALLOW)
    config = minimal_config(
        tmp_path,
        tools.url,
        policy={"engine": "embedded", "dir": str(policy)},
        audit={"path": str(tmp_path / "audit.log"), "signing_key": str(tmp_path / "audit.key")},
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(REPORT_HOOK)
    report = tmp_path / "heap.json"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "HEAP_REPORT": str(report),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    address = f"unix:{tmp_path}/agent.sock"
    answers: list[grpc.StatusCode] = []

    def call() -> grpc.StatusCode:
        answers.append(_call(address))
        return answers[-1]

    try:
        wait_serving(address, proc, timeout_s=START_S)
        assert [call() for _ in range(20)] == [grpc.StatusCode.OK] * 20
        (policy / "policy.rego").write_text(DENY)
        proc.send_signal(signal.SIGHUP)  # a new revision, built after the freeze
        poll(
            lambda: call() == grpc.StatusCode.PERMISSION_DENIED,
            timeout_s=START_S,
            what="the reloaded policy's deny",
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(START_S)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    heap = json.loads(report.read_text())
    assert heap["frozen"] > 10_000  # the imported world: tens of thousands of objects
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    calls = [r for r in lines if r.get("type") == "call"]
    statuses = [r["outcome"]["status"] for r in calls]
    assert statuses == [answer.name for answer in answers]  # one record per call, in order
    assert len({r["decision_id"] for r in calls}) == len(calls)
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "audit",
            "verify",
            str(tmp_path / "audit.log"),
            "--require-sealed",
            "--key",
            str(tmp_path / "audit.pub"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


SETTLE = """
import gc, json, weakref
import sidecar
from sidecar.server import settle_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

kept_before = cycle()          # garbage made before the freeze: collected by it
live = Node(); live.me = live  # a live cycle from start-up: frozen, still usable
settle_heap()
frozen = gc.get_freeze_count()
after = cycle()                # garbage made after: the collector still sees it
gc.collect()
print(json.dumps({
    "frozen": frozen,
    "before_collected": kept_before() is None,
    "after_collected": after() is None,
    "live_intact": live.me is live,
    "enabled": gc.isenabled(),
}))
"""


def test_item2_settle_heap_collects_then_freezes_and_new_cycles_are_still_collected():
    result = _fresh(SETTLE)
    assert result["frozen"] > 0
    assert result["before_collected"] and result["after_collected"] and result["live_intact"]
    assert result["enabled"]


TRACER = """
import json
import sidecar
from sidecar.tracing import Tracer, trace_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

tracer = Tracer()  # unbound: follows the process's global provider
caller = trace_context([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
with tracer.span("relay", caller, target="tickets") as before:
    header_before = caller.child_header(before)
provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # set after the tracer was made
with tracer.span("relay", caller, target="tickets") as after:
    header_after = caller.child_header(after)
spans = exporter.get_finished_spans()
print(json.dumps({
    "before": before, "header_before": header_before,
    "after": after, "header_after": header_after,
    "spans": [(s.name, format(s.context.span_id, "016x"), format(s.parent.span_id, "016x"))
              for s in spans],
}))
"""


def test_item3_no_provider_no_span_and_a_provider_set_later_is_followed():
    """With no tracer provider anywhere the span is skipped (no OpenTelemetry call on the
    path); the upstream still continues the caller's trace, below the caller's own span (as
    OpenTelemetry's no-op span passed it through: no parent that nobody records). A
    provider set later is followed at once."""
    result = _fresh(TRACER)
    assert result["before"] == "00f067aa0ba902b7"
    assert result["header_before"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert result["after"] and result["spans"] == [["relay", result["after"], "00f067aa0ba902b7"]]
    assert result["header_after"].split("-")[2] == result["after"]


@pytest.mark.parametrize("bad", ["", "00-zz-00f067aa0ba902b7-01", "00-" + "0" * 32 + "-1-01"])
def test_item3_a_malformed_traceparent_still_gets_a_fresh_trace_without_a_provider(bad):
    result = _fresh(TRACER.replace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", bad))
    assert result["before"] is None
    version, trace_id, span_id, _ = result["header_before"].split("-")
    assert (
        version == "00" and len(trace_id) == 32 and trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert set(trace_id) != {"0"} and set(span_id) != {"0"}


def test_item2_open_loop_says_when_the_machine_kept_the_sidecar_off_the_cpu():
    """The bench tells the machine's stalls from the sidecar's: its main thread's run-queue
    wait (/proc/PID/schedstat) per step, flagged in the table from 5%; a pid that is gone or
    unreadable counts as no wait rather than failing the bench."""
    from bench.open_loop import Step, runnable_wait_s, table

    assert runnable_wait_s([os.getpid()]) >= 0.0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert runnable_wait_s([gone.pid]) == 0.0
    steps = {
        "upstream": [Step(100, [1.0] * 100, 0, 0.0)],
        "pod": [Step(100, [2.0] * 100, 0, 0.0, cpu_us=900.0, runnable_wait=0.25)],
    }
    flagged = "\n".join(table(steps, 10.0))
    assert "(sidecar waited for a CPU 25% of the time)" in flagged
    steps["pod"][0].runnable_wait = 0.01
    assert "waited for a CPU" not in "\n".join(table(steps, 10.0))


def _pause_counts(registry: object) -> dict[str, float]:
    from prometheus_client import generate_latest

    counts = {}
    for line in generate_latest(registry).decode().splitlines():  # type: ignore[arg-type]
        if line.startswith("agent_sidecar_gc_pause_seconds_count"):
            generation = line.split('generation="')[1].split('"')[0]
            counts[generation] = float(line.rsplit(" ", 1)[1])
    return counts


def test_item2_gc_pauses_are_a_metric_and_closing_or_dropping_unhooks_it():
    """Operators see the tail's cause: every collection's pause by generation. ``close``
    removes the hook; a Metrics dropped unclosed observes nothing more and its hook is pruned
    by the next one made (no hook piles up, none keeps its owner alive)."""
    import gc

    from sidecar.metrics import Metrics

    metrics = Metrics(["tickets"])
    try:
        before = _pause_counts(metrics.registry).get("2", 0.0)
        gc.collect()
        assert _pause_counts(metrics.registry)["2"] == before + 1
        exposed = __import__("prometheus_client").generate_latest(metrics.registry).decode()
        buckets = [
            float(line.rsplit(" ", 1)[1])
            for line in exposed.splitlines()
            if line.startswith('agent_sidecar_gc_pause_seconds_bucket{generation="2"')
        ]
        assert buckets == sorted(buckets) and buckets[-1] == before + 1  # cumulative, +Inf last
    finally:
        metrics.close()
    assert metrics.gc_pauses._callback not in gc.callbacks
    gc.collect()
    assert _pause_counts(metrics.registry)["2"] == before + 1  # closed: no longer observing

    dropped = Metrics(["tickets"])
    hook = dropped.gc_pauses._callback
    del dropped
    gc.collect()
    assert hook.owner() is None  # not kept alive by its hook
    kept = Metrics(["tickets"])
    try:
        assert hook not in gc.callbacks and kept.gc_pauses._callback in gc.callbacks
    finally:
        kept.close()


def test_item3_call_floor_bench_prints_each_layer_of_a_calls_cpu():
    done = subprocess.run(
        [
            *(sys.executable, "bench/call_floor.py", "--rate", "50", "--seconds", "1"),
            *("--calls", "50", "--distinct"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        line[:36].strip(): float(line[36:].split()[0])
        for line in done.stdout.splitlines()
        if line.startswith("  ") and line[36:].strip()[:1].isdigit()
    }
    assert set(rows) == {
        "grpc (constant answer)",
        "grpc+relay (one aiohttp GET)",
        "agent-sidecar serve",
        "aiohttp GET alone",
        "ToolCalls.call (no gRPC)",
    }
    assert all(value > 0 for value in rows.values())
    assert "distinct arguments" in done.stdout
