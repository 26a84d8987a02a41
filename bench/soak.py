"""`make soak`: mixed traffic at a steady rate through a pod-mode sidecar for minutes, judged.

As in a pod, on this machine: the development Workload API (the pod's SVID), a tool and model
upstream (bench/soak_upstream.py, aiohttp; the chat endpoint streams), an MCP upstream (the
official SDK's server, tests/support/mcp_upstream.py, Streamable HTTP, stateless HTTP with JSON
responses as the SDK documents for production) and ``agent-sidecar
serve`` on the demo's configuration (examples/demo/config.yaml: identity mode ``pod``, the
shipped baseline policy, strict audit, the approvers' group) with every other setting at its
default (``server.workers``: one process) and only what the mix needs added: the targets, the
model provider, the front door, the MCP endpoint and its server. This process is the agent:
bench/soak_traffic.py offers the open-loop mix; a thread samples the sidecar's whole process
tree every second (RSS and PSS from /proc/PID/smaps_rollup of the serve process and all its
descendants). At the end the sidecar is stopped (its log sealed), every call is matched to
its audit record and ``agent-sidecar audit verify --require-sealed`` checks the chain; the
verdict (bench/soak_verdict.py) exits non-zero on any failed criterion.

Writes to --out: ``soak.md`` (the table, also printed), ``soak.png`` (RSS/PSS and p50/p99
over time), ``seconds.csv`` (one row a second), ``calls.csv`` (every call: its kind, when it
was due, its latency, its error, what names its audit record) and ``run/`` (configs, logs,
the audit log).

    python bench/soak.py [--duration 600] [--rate 300] [--warmup 60] [--out soak-out]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mcp_overhead import wait_http  # noqa: E402
from bench.relay_overhead import demo_config, start_sidecar  # noqa: E402
from bench.soak_plot import plot  # noqa: E402
from bench.soak_traffic import Call, Endpoints, Traffic  # noqa: E402
from bench.soak_verdict import (  # noqa: E402
    CallSample,
    Criteria,
    MemorySample,
    judge,
    match_audit,
    percentile,
    read_audit,
    seconds,
    table,
)
from examples.demo.run import free_port, start_workload_api, wait_serving  # noqa: E402
from sidecar.audit import rotated_files  # noqa: E402
from sidecar.workers import segments  # noqa: E402

PROVIDER_KEY = "sk-soak-provider-0123456789abcdefghij"  # a stand-in Secret, never printed


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (through each thread's ``children`` list)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_memory(pid: int) -> tuple[float, float, int, float]:
    """RSS and PSS (MB) summed over the process tree of ``pid``, how many processes, and
    their CPU seconds so far."""
    rss = pss = 0
    pids = process_tree(pid)
    cpu = 0.0
    for current in pids:
        try:
            text = Path(f"/proc/{current}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        cpu += cpu_seconds(current)
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024, len(pids), cpu


class Sampler(threading.Thread):
    """Samples the sidecar's tree once a second from ``start(t0)`` until ``stop``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.pid = pid
        self.samples: list[MemorySample] = []
        self.t0 = 0.0
        self._go = threading.Event()
        self._halt = threading.Event()

    def begin(self, t0: float) -> None:
        self.t0 = t0
        self._go.set()

    def stop(self) -> None:
        self._halt.set()
        self._go.set()
        self.join(10)

    def run(self) -> None:
        self._go.wait()
        tick = self.t0
        while not self._halt.wait(max(0.0, tick - time.monotonic())):
            rss, pss, count, cpu = tree_memory(self.pid)
            at = time.monotonic() - self.t0
            self.samples.append(MemorySample(at, rss, pss, count, cpu))
            tick += 1.0


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Bounded poll until something accepts connections on ``port`` (loopback)."""
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def sidecar_config(work: Path, upstream: int, mcp_upstream: int) -> dict[str, Any]:
    """The demo's configuration, pointed at this run's upstreams and listeners."""
    config = demo_config(work)
    config["identity"]["socket"] = f"unix://{work}/workload.sock"
    config["server"]["listen"] = [f"127.0.0.1:{free_port()}"]  # TCP: shared by the workers
    for target in config["targets"].values():
        target["base_url"] = f"http://127.0.0.1:{upstream}"
    config["targets"]["notes-mcp"] = {"base_url": f"http://127.0.0.1:{mcp_upstream}"}
    key = work / "provider.key"
    key.write_text(PROVIDER_KEY)
    key.chmod(0o600)
    config["providers"]["openai"] |= {
        "base_url": f"http://127.0.0.1:{upstream}/v1",
        "key_file": str(key),
    }
    config["frontdoor"] = {"listen": f"127.0.0.1:{free_port()}"}
    config["mcp"] = {"listen": f"127.0.0.1:{free_port()}"}
    config["mcp_servers"] = {
        "notes": {"target": "notes-mcp", "tools": {"search": {"operation": "read"}}}
    }
    return config


def audit_verify(audit_log: Path, bundle: Path) -> tuple[bool, str]:
    """``agent-sidecar audit verify --require-sealed`` over every worker's segment."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "sidecar.cli", "audit", "verify", str(audit_log)),
            *("--bundle", str(bundle), "--require-sealed"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def log_files(audit_log: Path) -> list[Path]:
    """Every worker's segment of the log and each one's rotations (``audit.log.N``)."""
    return [f for segment in segments(audit_log) for f in rotated_files(segment)]


def by_kind(calls: list[Call]) -> dict[str, tuple[int, int, float, float, float]]:
    grouped: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        grouped[call.kind].append(call)
    out = {}
    for kind, found in grouped.items():
        ok = [c.latency_ms for c in found if c.ok]
        lag = percentile([c.start_lag_ms for c in found], 99)
        out[kind] = (len(found), len(found) - len(ok), percentile(ok, 50), percentile(ok, 99), lag)
    return out


def harness_growth(grown: dict[str, list[float]]) -> str:
    """``name a -> b MB`` for each harness process measured twice (after warm-up, at the end)."""
    return ", ".join(
        f"{name} {rss[0]:.1f} -> {rss[-1]:.1f} MB" if len(rss) == 2 else f"{name} not measured"
        for name, rss in grown.items()
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    work = out / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = loadavg()
    processes: list[subprocess.Popen[bytes]] = []
    logs = [(work / f"{n}.log").open("wb") for n in ("workload-api", "upstream", "mcp")]
    try:
        processes.append(
            start_workload_api(work / "workload.sock", logs[0], bundle_out=work / "bundle.pem")
        )
        upstream, mcp_upstream = free_port(), free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench/soak_upstream.py"), "--port", str(upstream)],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.support.mcp_upstream", "notes"),
                    *("--http", str(mcp_upstream), "--stateless-http", "--json-response"),
                ],
                cwd=ROOT,
                stdout=logs[2],
                stderr=subprocess.STDOUT,
            )
        )
        for attempt in range(1, 4):  # a free port can be taken by another process meanwhile
            config = sidecar_config(work, upstream, mcp_upstream)
            sidecar = start_sidecar(work, config, stderr=(work / "sidecar.log").open("wb"))
            processes.append(sidecar)
            endpoints = Endpoints(
                grpc=config["server"]["listen"][0],
                approvals=config["approvals"]["listen"].replace("unix://", "unix:", 1),
                frontdoor=f"http://{config['frontdoor']['listen']}/v1",
                mcp=f"http://{config['mcp']['listen']}/mcp",
            )
            try:
                wait_serving(endpoints.grpc, sidecar, timeout_s=120)
                break
            except SystemExit:
                if sidecar.poll() is None or attempt == 3:
                    raise
                print(f"the sidecar exited at start (attempt {attempt}); see run/sidecar.log")
        # A TCP connect, not a GET: stateless, the SDK answers GET with an endless stream.
        wait_listening(mcp_upstream, processes[2], "the MCP upstream")
        wait_http(endpoints.mcp, sidecar, "the sidecar's MCP endpoint")
        wait_http(endpoints.frontdoor + "/models", sidecar, "the front door")
        sampler = Sampler(sidecar.pid)
        sampler.start()
        traffic = Traffic(endpoints, args.rate, args.duration, args.step_up_every)
        print(
            f"soak: {args.duration:.0f} s at {args.rate:.0f} calls/s through the sidecar "
            f"(pid {sidecar.pid}); load average {load_before}",
            flush=True,
        )
        # The harness's own upstreams, at the end of the warm-up and at the end: one that
        # grows (as the MCP upstream once did) stalls the calls it serves, not the sidecar.
        harness = {"MCP upstream": processes[2].pid, "tool/model upstream": processes[1].pid}
        grown: dict[str, list[float]] = {name: [] for name in harness}

        def measure_harness() -> None:
            for name, pid in harness.items():
                grown[name].append(tree_memory(pid)[0])

        at_warmup = threading.Timer(args.warmup, measure_harness)
        at_warmup.daemon = True
        at_warmup.start()
        agent_cpu = time.process_time()
        calls = asyncio.run(traffic.run(started=sampler.begin))
        agent_cpu = time.process_time() - agent_cpu
        at_warmup.cancel()
        measure_harness()
        sampler.stop()
        load_after = loadavg()
        sidecar.terminate()  # a graceful stop seals every segment with a closing checkpoint
        sidecar.wait(60)
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        for log in logs:
            log.close()
    audit_log = Path(config["audit"]["path"])
    verify_ok, verify_text = audit_verify(audit_log, work / "bundle.pem")
    audit = match_audit(
        [c.audit_key for c in calls], read_audit(log_files(audit_log)), verify_ok, verify_text
    )
    samples = [CallSample(c.scheduled_s, c.latency_ms, c.ok) for c in calls]
    criteria = Criteria(warmup_s=args.warmup, window_s=args.window)
    kinds = Counter(f"{c.kind}: {c.error}" for c in calls if not c.ok)
    verdict = judge(samples, sampler.samples, audit, args.duration, criteria, kinds)
    per_second = seconds(samples, sampler.samples, args.duration)
    tree = max((s.processes for s in sampler.samples), default=0)
    used = sampler.samples[-1].cpu_s - sampler.samples[0].cpu_s if sampler.samples else 0.0
    span = sampler.samples[-1].at_s - sampler.samples[0].at_s if sampler.samples else 0.0
    cpu = (
        f"Sidecar CPU {used / max(span, 1e-9):.0%} of one core over the run "
        f"({used / max(len(calls), 1) * 1e6:.0f} us per call); this agent process "
        f"{agent_cpu / args.duration:.0%} of one core."
    )
    note = (
        f"{args.duration:.0f} s at {args.rate:.0f} calls/s offered (open loop), warm-up "
        f"{args.warmup:.0f} s; pod mode, demo config, server.workers default ({tree} processes "
        f"in the sidecar's tree); {os.cpu_count()} CPUs; load average before {load_before}, "
        f"after {load_after}. Latency from each call's scheduled time. {cpu} Harness RSS "
        f"after warm-up -> at the end: {harness_growth(grown)}."
    )
    text = table(verdict, by_kind(calls), note)
    (out / "soak.md").write_text(text + "\n```\n" + verify_text + "\n```\n")
    with (out / "seconds.csv").open("w") as csv:
        csv.write("second,calls,errors,p50_ms,p99_ms,rss_mb,pss_mb\n")
        for w in per_second:
            csv.write(
                f"{w.start_s:.0f},{w.calls},{w.errors},{w.p50_ms:.3f},{w.p99_ms:.3f},"
                f"{w.rss_mb:.1f},{w.pss_mb:.1f}\n"
            )
    with (out / "calls.csv").open("w") as csv:  # every call: to re-judge or inspect a run
        csv.write("kind,scheduled_s,latency_ms,start_lag_ms,error,audit_key\n")
        for c in calls:
            key = ":".join(c.audit_key) if c.audit_key else ""
            error = c.error.replace(",", ";").replace("\n", " ")
            csv.write(
                f"{c.kind},{c.scheduled_s:.6f},{c.latency_ms:.3f},{c.start_lag_ms:.3f},"
                f"{error},{key}\n"
            )
    title = f"agent-sidecar soak: {args.rate:.0f} calls/s, {args.duration:.0f} s, pod mode"
    drawn = plot(per_second, out / "soak.png", args.warmup, verdict.window_s, title)
    print(text)
    print(verify_text.splitlines()[-1] if verify_text else "audit verify: no output")
    print(drawn)
    print(f"table: {out / 'soak.md'}; per second: {out / 'seconds.csv'}; work dir: {work}")
    return 0 if verdict.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=300.0, help="calls/s offered, in total")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before judging")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds compared at each end (at most)"
    )
    parser.add_argument(
        "--step-up-every",
        type=float,
        default=3.0,
        help="seconds between step-up flows (20/min: under approvals.max_new_per_minute, 30)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "soak-out")
    args = parser.parse_args(argv)
    for name in ("duration", "rate", "window", "step_up_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be at least 0 and less than --duration")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
