"""The hot path, side by side in one run (``make bench``): what the sidecar adds to tool and
model calls, how many decisions it makes at saturation, and what it holds in memory.

Everything runs on this machine at once, as in a pod: a fast upstream (bench/upstream.py,
aiohttp), the development Workload API, the sidecar (``agent-sidecar serve``, identity mode
``pod``, the shipped baseline policy on the embedded engine, strict audit, ``server.workers``
at its default: one process; ``--workers N`` for more) and this process, the agent (grpc.aio
and aiohttp clients, one connection per concurrent caller up to 8, so the kernel spreads them
over the workers, when there are several). On a
2-core machine the agent, the upstream and the sidecar share the same two cores: read the
differences and ratios; absolute figures are those of a crowded machine.

    python bench/hot_path.py [--scale 1.0] [--soak-calls 100000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.footprint import footprint, wait_complete  # noqa: E402
from bench.relay_overhead import demo_config, percentile, start_sidecar  # noqa: E402
from examples.demo.run import free_port, start_workload_api, wait_serving  # noqa: E402

grpc = __import__("grpc")
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc  # noqa: E402

ALLOW_ALL = 'package agentsidecar.authz\n\ndecision := {"effect": "allow", "reasons": []}\n'
MESSAGES = json.dumps([{"role": "user", "content": "summarise the printer ticket"}])
CHANNELS = 8


def serve(work: Path, name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    return start_sidecar(work, config, name=name, stderr=(work / f"{name}.log").open("wb"))


def sidecar_config(work: Path, name: str, upstream: int, workers: int | None) -> dict[str, Any]:
    config = demo_config(work / name)
    config["identity"]["socket"] = f"unix://{work}/workload.sock"
    config["server"]["listen"] = [f"127.0.0.1:{free_port()}"]
    config["identity"]["pod_tcp"] = True  # TCP (shared by the workers) in pod mode: opted in
    if workers is not None:
        config["server"]["workers"] = workers
    for target in config["targets"].values():
        target["base_url"] = f"http://127.0.0.1:{upstream}"
    (work / "provider.key").write_text("sk-bench-0123456789abcdefghijklmnop")
    config["providers"] = {
        "local": {
            "base_url": f"http://127.0.0.1:{upstream}/v1",
            "key_file": str(work / "provider.key"),
        }
    }
    config["models"] = {"local-small": {"provider": "local", "model": "bench-model"}}
    config["frontdoor"] = {"listen": f"127.0.0.1:{free_port()}"}
    return config


async def load(
    call: Callable[[int], Awaitable[None]], calls: int, concurrency: int
) -> tuple[list[float], float, int]:
    """``calls`` calls by ``concurrency`` callers: latencies (ms), seconds, failures."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(calls))

    async def caller(index: int) -> None:
        nonlocal failures
        for _ in counter:
            started = time.perf_counter()
            try:
                await call(index)
            except Exception:
                failures += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - started, failures


def row(
    name: str, latencies: list[float], seconds: float, failures: int, cpu_us: float | None = None
) -> str:
    if not latencies:
        return f"{name:<34} {'-':>8} {'-':>8} {'-':>9}   all {failures} failed"
    note = f"   {failures} failed" if failures else ""
    cpu = f" {cpu_us:>10.0f}" if cpu_us is not None else ""
    return (
        f"{name:<34} {percentile(latencies, 50):>8.2f} {percentile(latencies, 99):>8.2f} "
        f"{len(latencies) / seconds:>9.0f}{cpu}{note}"
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def timed_load(
    pids: list[int], call: Callable[[int], Awaitable[None]], calls: int, concurrency: int
) -> tuple[list[float], float, int, float]:
    """``load``, and the sidecar's CPU time per call (µs) meanwhile."""
    before = cpu_seconds(pids)
    latencies, seconds, failures = await load(call, calls, concurrency)
    used = cpu_seconds(pids) - before
    return latencies, seconds, failures, used / max(1, len(latencies)) * 1e6


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split between the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_stats(pids: list[int]) -> tuple[list[float], list[int]]:
    """RSS (MB) and threads of each process."""
    rss, threads = [], []
    for pid in pids:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        rss.append(int(fields["VmRSS"].split()[0]) / 1024)
        threads.append(int(fields["Threads"]))
    return rss, threads


def worker_pids(work: Path, name: str, proc: subprocess.Popen[bytes]) -> list[int]:
    status = work / name / "state" / "workers.json"
    if status.exists():
        return json.loads(status.read_text())["pids"]
    return [proc.pid]


class Agent:
    """grpc.aio channels (one connection each) to a sidecar."""

    def __init__(self, address: str) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(8)]
        self.stubs = [sidecar_pb2_grpc.SidecarStub(c) for c in self.channels]

    def stub(self, index: int) -> Any:
        return self.stubs[index % len(self.stubs)]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def measure(args: argparse.Namespace, work: Path, upstream: int) -> list[str]:
    main = serve(work, "main", sidecar_config(work, "main", upstream, args.workers))
    trivial_config = sidecar_config(work, "trivial", upstream, args.workers)
    (work / "allow-all").mkdir()
    (work / "allow-all" / "policy.rego").write_text(ALLOW_ALL)
    trivial_config["policy"]["dir"] = str(work / "allow-all")
    trivial_config["frontdoor"] = {}
    trivial = serve(work, "trivial", trivial_config)
    main_address = yaml.safe_load((work / "main.yaml").read_text())["server"]["listen"][0]
    trivial_address = trivial_config["server"]["listen"][0]
    out: list[str] = []
    try:
        wait_serving(main_address, main, timeout_s=60)
        wait_serving(trivial_address, trivial, timeout_s=60)
        wait_complete(work / "main" / "state", main)
        idle_tree = footprint(main.pid)  # every process: supervisor (if any) and workers
        pids = worker_pids(work, "main", main)
        rss_idle, threads_idle = proc_stats(pids)
        agent, ceiling = Agent(main_address), Agent(trivial_address)
        frontdoor = yaml.safe_load((work / "main.yaml").read_text())["frontdoor"]["listen"]
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        ticket = f"http://127.0.0.1:{upstream}/tickets/7"
        tool_request = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id":"7"}')
        check_request = sidecar_pb2.CheckRequest(tool="tickets.get", arguments_json='{"id":"7"}')

        async def direct(_: int) -> None:
            async with session.get(ticket) as response:
                await response.read()
                response.raise_for_status()

        async def call_tool(index: int) -> None:
            await agent.stub(index).CallTool(tool_request, timeout=10)

        def checker(target: Agent) -> Callable[[int], Awaitable[None]]:
            async def check(index: int) -> None:
                await target.stub(index).Check(check_request, timeout=10)

            return check

        body = {"model": "bench-model", "messages": json.loads(MESSAGES)}

        def completer(base: str, model: str, stream: bool) -> Callable[[int], Awaitable[None]]:
            payload = json.dumps(body | {"model": model, "stream": stream}).encode()

            async def complete(_: int) -> None:
                async with session.post(
                    base + "/chat/completions",
                    data=payload,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()  # the whole answer: the last chunk of a stream
                    response.raise_for_status()

            return complete

        scale = args.scale
        n = lambda calls: max(50, int(calls * scale))  # noqa: E731
        for call in (direct, call_tool, checker(agent), checker(ceiling)):
            await load(call, 200, 8)  # warm up connections, pools, the engine

        header = f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'CPU us/call':>11}"
        out += ["tool calls: direct to the upstream vs through the sidecar (CallTool)", header]
        for concurrency, calls in ((1, 1000), (8, 2500), (32, 4000)):
            d = await load(direct, n(calls), concurrency)
            s = await timed_load(pids, call_tool, n(calls), concurrency)
            out.append(row(f"  direct      c={concurrency}", *d))
            out.append(row(f"  sidecar     c={concurrency}", *s))
            out.append(
                f"  {'added':<32} {percentile(s[0], 50) - percentile(d[0], 50):>+8.2f} "
                f"{percentile(s[0], 99) - percentile(d[0], 99):>+8.2f}"
            )

        out += ["", "model calls: direct to the provider vs the front door (OpenAI API)", header]
        provider = f"http://127.0.0.1:{upstream}/v1"
        door = f"http://{frontdoor}/v1"
        for stream in (False, True):
            kind = "stream" if stream else "unary"
            d = await load(completer(provider, "bench-model", stream), n(600), 1)
            s = await timed_load(pids, completer(door, "local-small", stream), n(600), 1)
            out.append(row(f"  direct      {kind} c=1", *d))
            out.append(row(f"  front door  {kind} c=1", *s))
            out.append(
                f"  {'added':<32} {percentile(s[0], 50) - percentile(d[0], 50):>+8.2f} "
                f"{percentile(s[0], 99) - percentile(d[0], 99):>+8.2f}"
            )
        saturated = await timed_load(pids, completer(door, "local-small", False), n(2500), 32)
        out.append(row("  front door  unary c=32", *saturated))

        out += ["", "decisions at saturation (Check, c=32)", header]
        trivial_pids = worker_pids(work, "trivial", trivial)
        out.append(row("  baseline policy", *await timed_load(pids, checker(agent), n(5000), 32)))
        ids = iter(range(10**9))

        async def check_distinct(index: int) -> None:  # no decision memo hit: every input new
            request = sidecar_pb2.CheckRequest(
                tool="tickets.get", arguments_json=json.dumps({"id": str(next(ids))})
            )
            await agent.stub(index).Check(request, timeout=10)

        out.append(
            row("  baseline, distinct inputs", *await timed_load(pids, check_distinct, n(5000), 32))
        )
        out.append(
            row(
                "  allow-all policy", *await timed_load(trivial_pids, checker(ceiling), n(5000), 32)
            )
        )
        out.append(
            "  (CPU us/call: the sidecar's own CPU time per call, all its workers; the agent, "
            "the upstream and the sidecar share this machine's cores. The two policy rows "
            "repeat one input: decisions there are memo hits; 'distinct inputs' are not)"
        )

        soak = args.soak_calls
        soaked = await load(checker(agent), soak, 32)
        rss_after, threads_after = proc_stats(worker_pids(work, "main", main))
        after_tree = footprint(main.pid)
        await session.close()
        await agent.close()
        await ceiling.close()
        out += [
            "",
            f"memory and threads per worker ({len(pids)} workers; pids {pids})",
            f"  RSS idle MB              {' '.join(f'{v:6.1f}' for v in rss_idle)}",
            f"  RSS after {soak:>6} Checks {' '.join(f'{v:6.1f}' for v in rss_after)}"
            f"   ({len(soaked[0]) / soaked[1]:.0f}/s, {soaked[2]} failed)",
            f"  host PSS after           {' '.join(f'{pss_mb(p):6.1f}' for p in pids)}",
            f"  threads idle             {' '.join(f'{v:6d}' for v in threads_idle)}",
            f"  threads after            {' '.join(f'{v:6d}' for v in threads_after)}",
            "whole sidecar, every process summed (bench/footprint.py; the budget is read "
            "against pod alone: files shared outside the sidecar counted in full)",
            f"  idle                     {idle_tree.summary()}",
            f"  after all the calls above {after_tree.summary()}",
        ]
    finally:
        for proc in (main, trivial):
            proc.terminate()
            proc.wait(30)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="calls per cell x this")
    parser.add_argument("--soak-calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, help="server.workers (default: its default)")
    args = parser.parse_args()
    return run_with_upstream(measure, args, "agent-sidecar-hot-path-")


def run_with_upstream(
    measure: Callable[[Any, Path, int], Awaitable[list[str]]], args: Any, prefix: str
) -> int:
    """Run ``measure(args, work, port)`` beside a development Workload API and the bench
    upstream on ``port``, print its table, and stop both."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    workload_api = start_workload_api(work / "workload.sock", subprocess.DEVNULL)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    started = time.perf_counter()
    try:
        lines = asyncio.run(measure(args, work, port))
    finally:
        upstream.terminate()
        workload_api.terminate()
    print("\n".join(lines))
    print(f"\n(measured in {time.perf_counter() - started:.0f} s; work dir {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
