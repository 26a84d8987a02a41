"""``agent-sidecar serve`` with OPA's compiler vetting the policy in a child process (the
default) against in its own process (``policy.opa_compiler_in_process: true``, as before):
both started side by side in one run, on the shipped policy, RSS and OS threads of every
serving process once both answer calls (issue 30, deliverable 3).

    python bench/policy_engine_vetting.py [--calls 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.hot_path import proc_stats, serve, sidecar_config, worker_pids  # noqa: E402
from examples.demo.run import start_workload_api, wait_serving  # noqa: E402
from sidecar.policy import opa_compiler  # noqa: E402

grpc = __import__("grpc")
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc  # noqa: E402


def _go_mapped(pid: int) -> int:
    """1 if OPA's Go library is mapped into ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return int("libopabridge" in maps)


async def _calls(address: str, calls: int) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarStub(channel)
        ok = 0
        for i in range(calls):
            request = sidecar_pb2.CheckRequest(tool="tickets.get", arguments_json=f'{{"id":"{i}"}}')
            response = await stub.Check(request, timeout=10)
            ok += response.decision.effect == "allow"
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if opa_compiler.unavailable_reason():
        print(f"OPA's compiler is not installed: {opa_compiler.unavailable_reason()}")
        return 1
    work = Path(tempfile.mkdtemp(prefix="vetting-bench-"))
    workload_api = start_workload_api(work / "workload.sock", subprocess.DEVNULL)
    procs: dict[str, Any] = {}
    try:
        configs = {}
        for name, in_process in (("child", False), ("in_process", True)):
            config = sidecar_config(work, name, 9, args.workers)
            config["policy"]["opa_compiler_in_process"] = in_process
            config["policy"]["require_opa_compiler"] = True
            configs[name] = config
            procs[name] = serve(work, name, config)
        rows = {}
        for name, proc in procs.items():
            address = configs[name]["server"]["listen"][0]
            wait_serving(address, proc, timeout_s=120)
            ok = asyncio.run(_calls(address, args.calls))
            pids = worker_pids(work, name, proc)
            rss, threads = proc_stats(pids)
            rows[name] = (rss, threads, [_go_mapped(p) for p in pids], ok)
        print(
            f"{'serve, shipped policy':34} {'vetting in a child':>20} {'in-process (before)':>20}"
        )
        child, before = rows["child"], rows["in_process"]
        fmt = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"{'RSS per serving process MB':34} {fmt(child[0]):>20} {fmt(before[0]):>20}")
        print(f"{'OS threads per serving process':34} {fmt(child[1]):>20} {fmt(before[1]):>20}")
        print(f"{'Go library mapped (1: yes)':34} {fmt(child[2]):>20} {fmt(before[2]):>20}")
        print(f"{'Check calls answered':34} {child[3]:>20} {before[3]:>20}")
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)
        workload_api.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
