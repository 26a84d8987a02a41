"""CallTool and Check on two source trees side by side in one run: did a refactor slow the
hot path? (Issue 25: the guarded path by composition, against the mixins before it.)

Both sidecars run at once on this machine with the same config, policy (``--policy``, by
default the shipped baseline of the *before* tree), upstream and Workload API; each tree is
its own process (``PYTHONPATH`` set to the tree). The cells are interleaved, before and
after alternating which goes first each round, so that the load of a crowded machine falls
on both alike; latencies of all rounds are pooled per tree and cell.

    python bench/hot_path_ab.py --before /tmp/before25 [--after .] [--rounds 6] [--calls 400]

CPU us/call: the sidecar process's own CPU time per call, the steadiest figure on a
crowded machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.hot_path import (  # noqa: E402
    Agent,
    cpu_seconds,
    load,
    run_with_upstream,
    sidecar_config,
    worker_pids,
)
from bench.relay_overhead import percentile  # noqa: E402
from examples.demo.run import wait_serving  # noqa: E402
from sidecar._proto.agentsidecar.v1 import sidecar_pb2  # noqa: E402

CELLS = (("CallTool", 1), ("CallTool", 8), ("Check", 1), ("Check", 8))


def serve(work: Path, name: str, tree: Path, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    """``agent-sidecar serve`` from ``tree``'s sources."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"PYTHONPATH": str(tree)}
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
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{name}.log").open("wb"),
    )


async def measure(args: argparse.Namespace, work: Path, upstream: int) -> list[str]:
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    agents: dict[str, Agent] = {}
    try:
        for name, tree in trees.items():
            config = sidecar_config(work, name, upstream, args.workers)
            config["policy"]["dir"] = str(args.policy or trees["before"] / "rego")
            config["frontdoor"] = {}
            procs[name] = serve(work, name, tree, config)
            address = config["server"]["listen"][0]
            wait_serving(address, procs[name], timeout_s=60)
            agents[name] = Agent(address)
        tool = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id":"7"}')
        check = sidecar_pb2.CheckRequest(tool="tickets.get", arguments_json='{"id":"7"}')

        def caller(agent: Agent, rpc: str) -> Callable[[int], Awaitable[None]]:
            async def call(index: int) -> None:
                stub = agent.stub(index)
                if rpc == "CallTool":
                    await stub.CallTool(tool, timeout=10)
                else:
                    await stub.Check(check, timeout=10)

            return call

        for agent in agents.values():  # warm up connections, pools, the engine
            for rpc, _ in CELLS:
                await load(caller(agent, rpc), 200, 8)
        latencies: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        seconds: dict[tuple[str, str, int], float] = defaultdict(float)
        cpu: dict[tuple[str, str, int], float] = defaultdict(float)
        pids = {name: worker_pids(work, name, proc) for name, proc in procs.items()}
        failures: dict[tuple[str, str, int], int] = defaultdict(int)
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for rpc, concurrency in CELLS:
                for name in order:
                    key = (name, rpc, concurrency)
                    before = cpu_seconds(pids[name])
                    lat, secs, failed = await load(
                        caller(agents[name], rpc), args.calls * concurrency, concurrency
                    )
                    cpu[key] += cpu_seconds(pids[name]) - before
                    latencies[key] += lat
                    seconds[key] += secs
                    failures[key] += failed
        out = [
            f"{'':<22} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'CPU us/call':>11}   "
            f"({args.rounds} interleaved rounds; workers {args.workers})"
        ]
        for rpc, concurrency in CELLS:
            for name in ("before", "after"):
                key = (name, rpc, concurrency)
                lat = latencies[key]
                failed = f"   {failures[key]} failed" if failures[key] else ""
                out.append(
                    f"{rpc:<8} c={concurrency} {name:<8} {percentile(lat, 50):>8.3f} "
                    f"{percentile(lat, 99):>8.3f} {len(lat) / seconds[key]:>9.0f} "
                    f"{cpu[key] / max(1, len(lat)) * 1e6:>11.0f}{failed}"
                )
        return out
    finally:
        for agent in agents.values():
            await agent.close()
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the tree before (e.g. git archive)")
    parser.add_argument("--after", default=str(ROOT), help="the tree after (default: this one)")
    parser.add_argument("--policy", help="policy dir for both (default: the before tree's rego)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=400, help="calls per caller per cell")
    parser.add_argument("--workers", type=int, default=1, help="server.workers of each")
    args = parser.parse_args()
    return run_with_upstream(measure, args, "agent-sidecar-hot-path-ab-")


if __name__ == "__main__":
    sys.exit(main())
