"""Issue 26 item 2, the pod-mode tail-latency cliff: its cause (the agent API on a unix socket
is served by worker 0 alone, so with N workers agent calls get one core) shown on a real
``serve``, the warning that now says so at start, and the open-loop harness that measures it
(bench/open_loop.py). No duration is asserted: the harness's figures are read in `make bench`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.open_loop import Step, holds, offer
from examples.demo.run import free_port, wait_serving
from sidecar.client import SidecarClient
from sidecar.server import unix_only
from sidecar.workers import WorkersStatus
from tests.support.fleet import poll
from tests.support.running import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def call_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "call"]


def test_item2_cliff_cause_unix_agent_api_is_served_by_worker_0_alone(tmp_path, tools):
    """Two workers, the agent API on a unix socket and the front door on TCP (what made the
    supervisor start two workers in the issue's pod-mode run): every agent call lands on
    worker 0, none on worker 1, and worker 0 says so when it starts."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    sock = tmp_path / "agent.sock"
    raw["server"] = {"listen": [f"unix://{sock}"], "workers": 2}
    raw["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    raw["policy"]["dir"] = str(ROOT / "rego")
    raw["audit"] = {"path": str(tmp_path / "audit.log")}
    raw["audit"]["signing_key"] = str(tmp_path / "audit-signing.key")
    raw["admin"] = {"listen": ""}
    raw["state"] = {"dir": str(tmp_path / "state")}
    raw["frontdoor"] = {"listen": f"127.0.0.1:{free_port()}"}
    raw["mcp"], raw["mcp_servers"] = {}, {}
    raw["approvals"] = {"listen": f"unix://{tmp_path}/approvals.sock"}
    for target in raw["targets"].values():
        target["base_url"] = tools.url
        target.pop("auth", None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(tmp_path / "c.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_serving(f"unix:{sock}", proc)
        poll(
            lambda: (WorkersStatus.read(tmp_path / "state") or WorkersStatus(expected=2)).complete,
            timeout_s=90,
            what="both workers serving",
        )
        for _ in range(8):  # eight connections of their own: TCP would spread them
            with SidecarClient(f"unix:{sock}", timeout_s=20) as client:
                for _ in range(3):
                    client.call_tool("tickets.get", {"id": "7"})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert len(call_records(tmp_path / "audit.log")) == 24
    assert call_records(tmp_path / "audit.worker1.log") == []
    assert "the agent API listens on unix sockets only" in log.read_text()


def test_item2_unix_only_names_the_one_process_case():
    assert unix_only(["unix:///run/agent.sock"])
    assert unix_only(["unix:/a.sock", "unix:/b.sock"])
    assert not unix_only(["unix:/a.sock", "127.0.0.1:7443"])
    assert not unix_only(["127.0.0.1:7443"])
    assert not unix_only([])


def test_item2_open_loop_sends_on_its_clock_without_waiting_for_answers():
    """Open loop: every send is scheduled before any answer arrives (a closed loop would send
    the second only after the first answered); a failed call is counted, not timed."""

    async def run() -> tuple[Step, int]:
        release = asyncio.Event()
        started = 0

        async def call(index: int) -> None:
            nonlocal started
            started += 1
            if started == 20:
                release.set()  # only the 20th send releases the answers
            await release.wait()
            if index == 3:
                raise RuntimeError("refused")

        step = await offer(call, rate=2000, seconds=0.01)
        return step, started

    step, started = asyncio.run(run())
    assert started == 20
    assert len(step.latencies) == 19 and step.failures == 1
    assert step.why == {"RuntimeError": 1}  # and why it failed
    assert all(latency >= 0 for latency in step.latencies)


def test_item2_open_loop_holds_is_the_last_rate_before_the_first_breach():
    def step(rate: int, p99: float, failures: int = 0) -> Step:
        return Step(rate, [1.0] * 98 + [p99] * 2, failures, 0.0)

    steps = [step(200, 2), step(400, 9), step(600, 25), step(800, 3)]
    assert holds(steps, 10.0) == 400  # 800 recovered, but the cliff was at 600
    assert holds([step(200, 2, failures=1)], 10.0) == 0  # a failure breaks it too
    assert holds([Step(200, [], 5, 0.0)], 10.0) == 0


@pytest.mark.timeout(600)
def test_item2_open_loop_bench_prints_the_table_and_the_ratio():
    done = subprocess.run(
        [
            *(sys.executable, "bench/open_loop.py", "--rates", "20,40", "--seconds", "1"),
            *("--modes", "pod,static"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.split()[:1] == ["20"] for line in lines)
    assert any(line.split()[:1] == ["40"] for line in lines)
    for name in ("upstream", "pod", "static"):
        assert any(line.strip().startswith(f"{name} ") and "keeps p99" in line for line in lines)
    assert any("CPU split over its" in line for line in lines)
    assert "(ratio to upstream alone:" in done.stdout


def test_item2_policy_convoy_bench_prints_inline_and_threads_idle_and_busy():
    done = subprocess.run(
        [sys.executable, "bench/policy_convoy.py", "--decisions", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split()[:3] for line in done.stdout.splitlines()[2:]]
    assert rows == [
        ["inline", "idle", rows[0][2]],
        ["inline", "90%", "busy"],
        ["threads", "idle", rows[2][2]],
        ["threads", "90%", "busy"],
    ]
