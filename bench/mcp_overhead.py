"""What the MCP gateway adds: ``tools/call`` with the official ``mcp`` client, straight to an
upstream built on the official SDK and through the sidecar to the same upstream, side by
side in one run, on the handshake (2025-11-25) and the stateless (2026-07-28) revisions,
sequential and at --concurrency.

The upstream and the sidecar are processes of their own; this process is the agent (one
client session per row; at concurrency N, N requests in flight on it). The sidecar decides
each call with the baseline policy (notes.search is a read grant of the support agent) and
writes its audit record. Timings on shared machines are noisy: read the rows side by side.

    python bench/mcp_overhead.py [--calls 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay_overhead import demo_config, percentile, start_sidecar  # noqa: E402
from examples.demo.run import free_port  # noqa: E402

MODES = [("2025-11-25", "legacy"), ("2026-07-28", "2026-07-28")]


def wait_http(url: str, process: subprocess.Popen, what: str) -> None:
    """Bounded poll until ``url`` answers at all (any status)."""
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


async def measure(url: str, mode: str, calls: int, concurrency: int) -> dict[str, float]:
    from mcp import Client

    async with Client(url, mode=mode) as client:
        arguments = {"query": "refund policy"}
        tool = TOOL[url]
        for _ in range(50):  # warm up: connections, caches, the policy's first evaluations
            await client.call_tool(tool, arguments)
        seq: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            seq.append((time.perf_counter() - started) * 1000)
            assert not result.is_error
        conc: list[float] = []

        async def worker(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                await client.call_tool(tool, arguments)
                conc.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "p50": statistics.median(seq),
        "p99": percentile(seq, 99),
        "rate": len(conc) / elapsed,
        "p50c": statistics.median(conc),
    }


TOOL: dict[str, str] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    upstream_port, mcp_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.support.mcp_upstream", "notes", "--http", str(upstream_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    config = demo_config(work)
    config["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    config["targets"] = {"notes-mcp": {"base_url": f"http://127.0.0.1:{upstream_port}"}}
    config["tools"] = {}
    config["policy"]["fail_open_on_engine_error"] = []
    config["mcp"] = {"listen": f"127.0.0.1:{mcp_port}"}
    config["mcp_servers"] = {
        "notes": {"target": "notes-mcp", "tools": {"search": {"operation": "read"}}}
    }
    sidecar = start_sidecar(work, config, stderr=sys.stderr)
    direct = f"http://127.0.0.1:{upstream_port}/mcp"
    through = f"http://127.0.0.1:{mcp_port}/mcp"
    TOOL.update({direct: "search", through: "notes.search"})
    try:
        wait_http(direct, upstream, "the upstream")
        wait_http(through, sidecar, "the sidecar")
        rows = []
        for revision, mode in MODES:
            for label, url in (("direct", direct), ("through the sidecar", through)):
                got = asyncio.run(measure(url, mode, args.calls, args.concurrency))
                rows.append((revision, label, got))
        print(
            f"\ntools/call, official mcp client, {args.calls} calls each "
            f"(sequential; then concurrency {args.concurrency})\n"
        )
        head = ("revision", "path", "p50 ms", "p99 ms", "calls/s", "p50 ms")
        print("{:<11} {:<20} {:>7} {:>7} {:>8} {:>7}".format(*head))
        for revision, label, got in rows:
            print(
                f"{revision:<11} {label:<20} {got['p50']:7.2f} {got['p99']:7.2f} "
                f"{got['rate']:8.0f} {got['p50c']:7.2f}"
            )
        print()
        for i in range(0, len(rows), 2):
            (revision, _, d), (_, _, s) = rows[i], rows[i + 1]
            print(
                f"{revision}: added p50 {s['p50'] - d['p50']:+.2f} ms sequential; "
                f"throughput at c={args.concurrency} {100 * s['rate'] / d['rate']:.0f}% of direct"
            )
    finally:
        for process in (sidecar, upstream):
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
