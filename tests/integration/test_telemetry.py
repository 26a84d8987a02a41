"""Issue 28 items 1-3 with real sidecars (in-process, real gRPC on a unix socket, a real HTTP
upstream) and a real OTLP receiver: a dead or slow collector never delays or fails a call and
its drops are counted; content reaches an attribute only under ``log: full`` with capture on;
the approval wait is a child span; hostile tool and model names cannot multiply series.
"""

from __future__ import annotations

import re
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from sidecar.metrics import NAME_CAP, Metrics
from tests.support.otlp_receiver import OtlpReceiver, wait_for
from tests.support.running import RunningSidecar, sidecar_settings

REFUND = {"order": "A-1", "amount": 500, "note": "content-needle-7731"}
CALLS = 40


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, name: str, tools_url: str, **overrides: Any) -> RunningSidecar:
    directory = tmp_path / name
    directory.mkdir()
    return RunningSidecar(sidecar_settings(directory, tools_url, **overrides))


def _start_capturing(
    tmp_path: Path, tools_url: str, receiver: OtlpReceiver, capture: bool
) -> RunningSidecar:
    """A sidecar exporting to ``receiver`` over gRPC, content capture on or off."""
    telemetry = {
        "endpoint": receiver.grpc_endpoint,
        "batch_delay_s": 0.1,
        "capture_content": capture,
    }
    return _start(tmp_path, "s", tools_url, telemetry=telemetry)


def _scrape(running: RunningSidecar) -> str:
    port = running.sidecar.admin_port
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _dropped(running: RunningSidecar, signal: str, reason: str) -> float:
    pattern = (
        r"^agent_sidecar_telemetry_dropped_total\{"
        rf'(?=[^}}]*reason="{reason}")(?=[^}}]*signal="{signal}")[^}}]*\}} (\S+)$'
    )
    found = re.search(pattern, _scrape(running), re.M)
    return float(found.group(1)) if found else 0.0


def _timed_calls(running: RunningSidecar, n: int) -> list[float]:
    """``n`` allowed tool calls, one after another; each one's latency (ms)."""
    out = []
    with running.client(timeout_s=20) as client:
        for i in range(n):
            started = time.perf_counter()
            result = client.call_tool("tickets.get", {"id": str(i)})
            out.append((time.perf_counter() - started) * 1000)
            assert result.status == 200
    return out


def test_item1_a_dead_or_slow_collector_never_delays_or_fails_a_call(tmp_path, tools, capsys):
    """Side by side in one run: telemetry off, the collector dead (a closed port), the
    collector slow (every export blocked until the test releases it). Every call completes
    while the slow collector holds its exports; what could not be queued or sent is counted.
    The latencies are printed (measured, never asserted)."""
    small = {"queue_size": 8, "batch_delay_s": 0.05, "metrics_interval_s": 0.2}
    with OtlpReceiver() as slow:
        slow.hold()
        off = _start(tmp_path, "off", tools.url)
        dead = _start(
            tmp_path,
            "dead",
            tools.url,
            telemetry={
                "endpoint": f"http://127.0.0.1:{_closed_port()}",
                "export_timeout_s": 1,
                **small,
            },
        )
        held = _start(
            tmp_path, "slow", tools.url, telemetry={"endpoint": slow.grpc_endpoint, **small}
        )
        # The slow collector has an export in its hands, blocked, before the measured calls.
        _timed_calls(held, 1)
        wait_for(lambda: slow.held >= 1, what="an export blocked in the collector")

        latencies: dict[str, list[float]] = {"off": [], "dead": [], "slow": []}
        for _ in range(CALLS // 10):  # interleaved, so that the three share the machine alike
            for name, running in (("off", off), ("dead", dead), ("slow", held)):
                latencies[name] += _timed_calls(running, 10)
        assert all(len(v) == CALLS for v in latencies.values())  # every call answered
        assert slow.held >= 1 and slow.spans() == []  # ... all while the collector held

        # Drops are counted, not waited for: the slow collector's queue overflowed, the dead
        # one's exports failed.
        wait_for(lambda: _dropped(held, "spans", "queue_full") > 0, what="queue_full counted")
        wait_for(lambda: _dropped(dead, "spans", "export_failed") > 0, what="export_failed")
        assert _dropped(off, "spans", "queue_full") == 0

        with capsys.disabled():
            for name, values in latencies.items():
                ordered = sorted(values)
                print(
                    f"\n[telemetry latency] {name:>4}: median {statistics.median(values):.2f} ms, "
                    f"p95 {ordered[int(len(ordered) * 0.95) - 1]:.2f} ms over {len(values)} calls"
                )
        slow.release()
        for running in (off, dead, held):
            running.stop()


def _approved_refund(running: RunningSidecar) -> str:
    """A refund that steps up, waits, and is approved while it waits; its decision id."""
    with running.client(timeout_s=20) as client, ThreadPoolExecutor(1) as pool:
        task = client.start_task("refund order A-1")
        call = pool.submit(client.call_tool, "payments.refund", REFUND, task_id=task.task_id)

        def pending() -> Any:
            with running.approvals() as admin:
                found = admin.list(["pending"])
                return found[0] if found else None

        approval = wait_for(pending, what="the pending approval")
        with running.approvals() as admin:
            admin.approve(approval.id, reason="customer confirmed")
        result = call.result(timeout=20)
    assert result.status == 200
    return result.decision.decision_id


@pytest.mark.parametrize("capture", [False, True])
def test_item2_content_only_under_log_full_and_capture_and_the_approval_wait_is_a_span(
    tmp_path, tools, capture
):
    """The approved refund is logged in full (the baseline's approved obligations): its
    arguments become ``gen_ai.tool.call.arguments`` only with ``capture_content`` on. Its
    span has the approval id and an ``approval wait`` child."""
    with OtlpReceiver() as receiver:
        running = _start_capturing(tmp_path, tools.url, receiver, capture)
        decision_id = _approved_refund(running)

        def call_span() -> Any:
            found = [
                s
                for s in receiver.spans()
                if s.attributes.get("agent_sidecar.decision.id") == decision_id
            ]
            return found[0] if found else None

        span = wait_for(call_span, what="the refund's span")
        children = wait_for(
            lambda: (
                {s.name: s for s in receiver.spans() if s.parent_span_id == span.span_id}
                if len(receiver.spans()) >= 4
                else None
            ),
            what="its children",
        )
        assert span.attributes["agent_sidecar.approval.id"].startswith("ap-")
        wait = children["approval wait"]
        assert (
            wait.attributes["agent_sidecar.approval.id"]
            == span.attributes["agent_sidecar.approval.id"]
        )
        assert {"attest", "decide", "relay"} <= set(children)
        exported = repr([s.attributes for s in receiver.spans()])
        if capture:
            assert "content-needle-7731" in span.attributes["gen_ai.tool.call.arguments"]
        else:
            assert "gen_ai.tool.call.arguments" not in span.attributes
            assert "content-needle-7731" not in exported
        running.stop()


def test_item2_capture_on_but_log_not_full_exports_no_content(tmp_path, tools):
    """capture_content alone is not enough: an ordinary allow is logged redacted, and its
    arguments never become an attribute."""
    with OtlpReceiver() as receiver:
        running = _start_capturing(tmp_path, tools.url, receiver, True)
        with running.client() as client:
            client.call_tool("tickets.get", {"id": "content-needle-8842"})
        wait_for(lambda: len(receiver.spans()) >= 4, what="the call's spans")
        assert "content-needle-8842" not in repr([s.attributes for s in receiver.spans()])
        running.stop()


HOSTILE = [
    "x" * 5000,
    'tickets.get\nfake_series{a="b"} 1',
    "名前/ツール",
    "",
    "'; DROP TABLE series; --",
    *(f"tool-{i}" for i in range(300)),
]


def test_item3_hostile_tool_names_cannot_multiply_series(tmp_path, tools):
    """Hundreds of distinct unknown (and malformed, oversized) tool names: each call is
    refused, and the GenAI series name only configured tools, or ``_other``."""
    running = _start(tmp_path, "s", tools.url)
    with running.client() as client:
        for name in HOSTILE:
            with pytest.raises(Exception):  # unknown_tool / malformed: refused, audited
                client.call_tool(name, {})
        client.call_tool("tickets.get", {"id": "1"})
    scrape = _scrape(running)
    names = set(
        re.findall(
            r"gen_ai_client_operation_duration_seconds_count\{[^}]*"
            r'gen_ai_tool_name="([^"]*)"',
            scrape,
        )
    )
    assert names <= set(running.settings.tools) | {"_other"}
    assert "tickets.get" in names and "_other" in names
    running.stop()


def test_item3_resolved_names_beyond_the_cap_are_other():
    """A hostile MCP server can list thousands of tools the sidecar then resolves: beyond
    NAME_CAP distinct names (besides the configured ones) every further name is ``_other``,
    in Prometheus and in what reaches the OTLP sink."""
    metrics = Metrics(["tickets"], tools=["tickets.get"], models=["gpt-small"])
    seen: list[Any] = []
    metrics.add_sink(seen.append)
    for i in range(NAME_CAP * 5):
        metrics.observe(
            {
                "decision_id": f"d{i}",
                "rpc": "MCP tools/call",
                "action": {"kind": "mcp", "name": f"evil.tool{i}", "method": "tools/call"},
                "decision": {"effect": "allow", "code": "ok"},
                "outcome": {"status": "OK", "code": "ok"},
                "latency_ms": {"total": 1.0},
            }
        )
    samples = [
        s
        for family in metrics.registry.collect()
        if family.name == "gen_ai_client_operation_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    ]
    names = {s.labels["gen_ai_tool_name"] for s in samples}
    assert len(names) == NAME_CAP + 1 and "_other" in names
    assert {o.genai.attributes["gen_ai.tool.name"] for o in seen} == names
