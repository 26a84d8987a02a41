"""What the sidecar adds to a tool call: the same calls straight to the upstream, then through
the sidecar, measured in one run on this machine.

The upstream (examples/demo/tools_server.py), the sidecar (identity mode ``pod``, a
development Workload API beside it, a JWT-SVID injected for the tickets upstream) each run in
their own process, as in a pod; this process is the agent. Prints p50/p99 for both paths and
the added latency, and the same calls made under a task (counted in the state database).
Timings on shared machines are noisy: read the ratio and the difference, not absolute values.

    python bench/relay_overhead.py [--calls 2000] [--concurrency 8] [--tool tickets.get]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.demo.run import free_port, start_workload_api, wait_serving  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def demo_config(work: Path) -> dict:
    """The demo config with the listener, audit log and state in ``work``."""
    config = yaml.safe_load((ROOT / "examples/demo/config.yaml").read_text())
    config["server"]["listen"] = [f"unix://{work}/agent.sock"]
    config["admin"] = {"listen": ""}
    config["policy"]["dir"] = str(ROOT / "rego")
    config["audit"]["path"] = str(work / "audit.log")
    config["state"] = {"dir": str(work / "state")}
    config["approvals"]["listen"] = f"unix://{work}/approvals.sock"
    config["frontdoor"] = {}
    config["mcp"], config["mcp_servers"] = {}, {}  # bench/mcp_overhead.py sets its own
    return config


def start_sidecar(
    work: Path, config: dict, name: str = "config", stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen:
    """``agent-sidecar serve`` on ``config`` (written to ``work/NAME.yaml``) as its own
    process, logging warnings and worse only (to ``stderr``)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "serve",
            "--config",
            str(path),
            "--log-level=warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def run_calls(call, calls: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        call()
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(calls)))
    return latencies, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tool", default="tickets.get")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agent-sidecar-bench-"))
    workload_api = start_workload_api(work / "workload.sock", subprocess.DEVNULL)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/demo/tools_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    config = demo_config(work)
    config["identity"]["socket"] = f"unix://{work}/workload.sock"
    for target in config["targets"].values():
        target["base_url"] = f"http://127.0.0.1:{port}"
    sidecar = start_sidecar(work, config)
    address = f"unix:{work}/agent.sock"
    try:
        wait_serving(address, sidecar)
        direct_url = f"http://127.0.0.1:{port}/tickets/7"
        local = threading.local()

        def direct() -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            response = session.get(direct_url, timeout=10)
            response.raise_for_status()

        client = SidecarClient(address, timeout_s=10)

        def via_sidecar() -> None:
            client.call_tool(args.tool, {"id": "7"})

        task = client.start_task("benchmark").task_id

        def via_sidecar_task() -> None:
            client.call_tool(args.tool, {"id": "7"}, task_id=task)

        for call in (direct, via_sidecar):  # warm up connections and the policy engine
            run_calls(call, 50, args.concurrency)
        direct_ms, direct_s = run_calls(direct, args.calls, args.concurrency)
        sidecar_ms, sidecar_s = run_calls(via_sidecar, args.calls, args.concurrency)
        task_ms, task_s = run_calls(via_sidecar_task, args.calls, args.concurrency)
        client.close()
    finally:
        for proc in (sidecar, upstream, workload_api):
            proc.terminate()
            proc.wait(10)

    audit_lines = [json.loads(line) for line in (work / "audit.log").read_text().splitlines()]
    audit_records = sum(1 for record in audit_lines if record.get("type") == "call")
    print(f"relay overhead: {args.calls} calls of {args.tool}, concurrency {args.concurrency}")
    print(f"{'path':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'calls/s':>9}")
    for name, values, total in (
        ("direct", direct_ms, direct_s),
        ("sidecar", sidecar_ms, sidecar_s),
        ("+task", task_ms, task_s),
    ):
        print(
            f"{name:<10} {percentile(values, 50):>8.2f} {percentile(values, 99):>8.2f} "
            f"{statistics.fmean(values):>8.2f} {len(values) / total:>9.0f}"
        )
    p50 = percentile(sidecar_ms, 50) - percentile(direct_ms, 50)
    p99 = percentile(sidecar_ms, 99) - percentile(direct_ms, 99)
    ratio = percentile(sidecar_ms, 50) / percentile(direct_ms, 50)
    print(
        f"added latency: p50 +{p50:.2f} ms, p99 +{p99:.2f} ms; p50 ratio sidecar/direct {ratio:.2f}"
    )
    task_p50 = percentile(task_ms, 50) - percentile(sidecar_ms, 50)
    print(f"a task on each call (state database update): p50 {task_p50:+.2f} ms")
    print(f"audit records written: {audit_records} (one per call through the sidecar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
