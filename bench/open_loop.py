"""Open-loop CallTool: a fixed offered rate, p50/p99/max per rate, pod and static identity side
by side with the upstream alone, in one run (``make bench``; issue 26 item 2, "no cliff").

Closed-loop benchmarks (a caller waits for its answer before sending again) hide a stall: the
callers slow down with the server, and the calls that would have been sent meanwhile are never
measured (coordinated omission). Here sends are scheduled on a clock (call i at ``start +
i/rate``) and never wait for replies; a call's latency is measured from its *scheduled* send
time, so a stall counts against every call it delayed. Each rate is offered to the upstream
alone (bench/upstream.py, one aiohttp GET per call), then to a sidecar in identity mode ``pod``
(the development Workload API), then to one in mode ``static``; the two sidecars differ only
in the mode (both mint a JWT-SVID for the tickets upstream, both sign audit checkpoints with
the SVID). The sidecar's own CPU time per call (all its workers, from /proc) is the robust
figure on a shared machine; latencies are those of whatever else runs on it.

    python bench/open_loop.py [--rates 200,400,...] [--seconds 5] [--workers N] [--p99-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.hot_path import (  # noqa: E402
    Agent,
    cpu_seconds,
    run_with_upstream,
    serve,
    sidecar_config,
    worker_pids,
)
from bench.relay_overhead import percentile  # noqa: E402
from examples.demo.run import SPIFFE_ID, wait_serving  # noqa: E402
from sidecar._proto.agentsidecar.v1 import sidecar_pb2  # noqa: E402

RATES = (200, 400, 600, 800, 1000, 1200, 1400, 1600)
Call = Callable[[int], Awaitable[None]]


@dataclass
class Step:
    """One rate offered to one target."""

    rate: int
    latencies: list[float]  # ms from the scheduled send to the answer
    failures: int
    send_lag_ms: float  # how late the client itself sent the latest call (its own limit)
    cpu_us: float | None = None  # the sidecar's CPU time per call
    # Share of the step's wall time the sidecar's main thread (its event loop) was ready to
    # run but had no CPU (/proc/PID/schedstat): the machine's stall, not the sidecar's.
    runnable_wait: float | None = None
    # why calls failed: the gRPC status (policy_timeout under overload is UNAVAILABLE) or error
    why: collections.Counter[str] = field(default_factory=collections.Counter)

    def cell(self) -> str:
        if not self.latencies:
            return f"{'all failed':>24}"
        return (
            f"{percentile(self.latencies, 50):>7.2f} {percentile(self.latencies, 99):>8.2f} "
            f"{max(self.latencies):>8.1f}"
        )


async def offer(call: Call, rate: int, seconds: float) -> Step:
    """Send ``rate`` calls per second for ``seconds`` on a fixed schedule, never waiting for an
    answer before the next send; every latency counts from the scheduled send time."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    failures = 0
    why: collections.Counter[str] = collections.Counter()
    lag = 0.0

    async def one(index: int, scheduled: float) -> None:
        nonlocal failures
        try:
            await call(index)
        except Exception as exc:
            failures += 1
            code = getattr(exc, "code", None)
            why[code().name if callable(code) else type(exc).__name__] += 1
            return
        latencies.append((time.perf_counter() - scheduled) * 1000)

    tasks: set[asyncio.Task[None]] = set()
    # The harness's own heap out of the collector's scans, as the sidecar's (settle_heap): a
    # full collection of this client's grpc/protobuf world is a 10-30 ms stall that the
    # latencies would charge to whatever it measures.
    gc.collect()
    gc.freeze()
    start = time.perf_counter() + 0.05
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag = max(lag, -delay)
        task = asyncio.create_task(one(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return Step(rate, latencies, failures, lag * 1000, why=why)


SHARES: dict[str, list[float]] = {}  # mode -> each worker's share of the sidecar's CPU


async def ladder(
    name: str, call: Call, rates: list[int], seconds: float, pids: list[int] | None
) -> list[Step]:
    steps = []
    start = [cpu_seconds([pid]) for pid in pids or ()]
    for rate in rates:
        before = cpu_seconds(pids) if pids else 0.0
        waited, started = runnable_wait_s(pids or []), time.perf_counter()
        step = await offer(call, rate, seconds)
        if pids:
            step.cpu_us = (cpu_seconds(pids) - before) / max(1, len(step.latencies)) * 1e6
            step.runnable_wait = (runnable_wait_s(pids) - waited) / (
                len(pids) * (time.perf_counter() - started)
            )
        steps.append(step)
        why = ", ".join(f"{k} {v}" for k, v in step.why.most_common())
        wait = (
            f" waited runnable {step.runnable_wait:.0%}" if step.runnable_wait is not None else ""
        )
        print(
            f"  {name:<8} {rate:>5}/s {step.cell()}  failed {step.failures} {why}{wait}",
            flush=True,
        )
    if pids:
        used = [cpu_seconds([pid]) - before for pid, before in zip(pids, start, strict=True)]
        SHARES[name] = [u / max(sum(used), 1e-9) for u in used]
    return steps


def runnable_wait_s(pids: list[int]) -> float:
    """Seconds the processes' main threads have waited on a run queue (ready, no CPU)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # no schedstats on this kernel: counts as none
    return total / 1e9


def holds(steps: list[Step], p99_ms: float) -> int:
    """The highest rate up to which every step kept p99 within ``p99_ms`` without failures."""
    held = 0
    for step in steps:
        if not step.latencies or step.failures or percentile(step.latencies, 99) > p99_ms:
            break
        held = step.rate
    return held


def table(results: dict[str, list[Step]], p99_ms: float) -> list[str]:
    names = list(results)
    head = f"{'rate/s':>7} " + " ".join(f"{n + ' p50/p99/max ms':>24}" for n in names)
    out = [
        "open-loop CallTool (latency from the scheduled send; coordinated omission counted)",
        head + f" {'CPU us/call ' + '/'.join(names[1:]):>26}",
    ]
    for i, step in enumerate(results[names[0]]):
        cells = " ".join(results[n][i].cell() for n in names)
        cpu = " / ".join(
            f"{results[n][i].cpu_us:.0f}" for n in names if results[n][i].cpu_us is not None
        )
        lag = max(results[n][i].send_lag_ms for n in names)
        flag = f"  (client sent up to {lag:.0f} ms late)" if lag > 5 else ""
        waits = [w for n in names if (w := results[n][i].runnable_wait) is not None]
        if waits and max(waits) >= 0.05:  # the machine kept the event loop off the CPU
            flag += f"  (sidecar waited for a CPU {max(waits):.0%} of the time)"
        failed = sum(results[n][i].failures for n in names)
        flag += f"  ({failed} failed)" if failed else ""
        out.append(f"{step.rate:>7} {cells} {cpu:>26}{flag}")
    upstream = holds(results[names[0]], p99_ms)
    out.append("")
    for name in names:
        held = holds(results[name], p99_ms)
        ratio = f"{held / upstream:.2f}" if upstream else "-"
        out.append(
            f"  {name:<8} keeps p99 <= {p99_ms:g} ms up to {held:>5} calls/s  "
            f"(ratio to upstream alone: {ratio})"
        )
    for name, shares in SHARES.items():
        split = " ".join(f"{share:.0%}" for share in shares)
        out.append(f"  {name:<8} CPU split over its {len(shares)} worker(s): {split}")
    return out


async def measure(args: argparse.Namespace, work: Path, upstream: int) -> list[str]:
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[str, list[Step]] = {}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    ticket = f"http://127.0.0.1:{upstream}/tickets/7"

    async def direct(_: int) -> None:
        async with session.get(ticket) as response:
            await response.read()
            response.raise_for_status()

    try:
        await offer(direct, 200, 1.0)  # warm up
        results["upstream"] = await ladder("upstream", direct, rates, args.seconds, None)
        for mode in args.modes.split(","):
            results[mode] = await measure_mode(args, work, upstream, mode, rates)
    finally:
        await session.close()
    return table(results, args.p99_ms)


async def measure_mode(
    args: argparse.Namespace, work: Path, upstream: int, mode: str, rates: list[int]
) -> list[Step]:
    config = sidecar_config(work, mode, upstream, args.workers)
    config["providers"], config["models"] = {}, {}
    if mode == "pod":  # the agent API on its shipped unix socket, the front door on TCP
        (work / mode).mkdir(parents=True, exist_ok=True)
        config["server"]["listen"] = [f"unix://{work}/{mode}/agent.sock"]
        config["frontdoor"] = {"listen": config["frontdoor"]["listen"]}
    else:  # pod-tcp, static: the agent API on TCP (shared by every worker)
        config["frontdoor"] = {}
    if args.inline_max_ms is not None:
        config["policy"]["inline_max_ms"] = args.inline_max_ms
    if mode == "static":
        config["identity"] |= {"mode": "static", "spiffe_id": SPIFFE_ID, "pod_tcp": False}
    proc = serve(work, mode, config)
    address = config["server"]["listen"][0].replace("unix://", "unix:")
    request = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id":"7"}')
    agent: Any = None
    try:
        wait_serving(address, proc, timeout_s=90)
        agent = Agent(address)

        async def call_tool(index: int) -> None:
            await agent.stub(index).CallTool(request, timeout=10)

        await offer(call_tool, 200, 2.0)  # warm up channels, pools, the engine
        return await ladder(mode, call_tool, rates, args.seconds, worker_pids(work, mode, proc))
    finally:
        if agent is not None:
            await agent.close()
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate")
    parser.add_argument(
        "--modes", default="pod,pod-tcp,static", help="pod: the agent API on a unix socket"
    )
    parser.add_argument("--workers", type=int, help="server.workers (default: its default)")
    parser.add_argument("--p99-ms", type=float, default=10.0)
    parser.add_argument(
        "--inline-max-ms",
        type=float,
        help="policy.inline_max_ms (0: every decision on the engine's threads, as before the fix)",
    )
    args = parser.parse_args()
    return run_with_upstream(measure, args, "agent-sidecar-open-loop-")


if __name__ == "__main__":
    sys.exit(main())
