"""What a CallTool's CPU is made of (issue 26 items 2 and 3): the floor under the sidecar.

Three processes are driven open loop at the same rate over a unix socket, and their CPU per
call read from /proc (robust on a shared machine, unlike latencies):

- ``grpc``: a bare ``grpc.aio`` server whose CallTool answers a constant (gRPC's own cost);
- ``grpc+relay``: the same, relaying one aiohttp GET to the bench upstream (the transports);
- ``sidecar``: ``agent-sidecar serve`` in mode static, the shipped policy.

Then, in this process, the guarded path without gRPC: the real sidecar built from the same
configuration and ``ToolCalls.call`` awaited in a loop, against one aiohttp GET alone, as
this thread's CPU (``time.thread_time``). ``--distinct`` makes every in-process call's
arguments differ (no decision memo hit); by default they repeat, as in bench/hot_path.py and
in the open-loop part always.

    python bench/call_floor.py [--rate 500] [--seconds 4] [--calls 3000] [--distinct]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.hot_path import (  # noqa: E402
    Agent,
    cpu_seconds,
    run_with_upstream,
    serve,
    sidecar_config,
)
from bench.open_loop import offer  # noqa: E402
from examples.demo.run import SPIFFE_ID, wait_serving  # noqa: E402
from sidecar._proto.agentsidecar.v1 import sidecar_pb2  # noqa: E402

# The bare server, run as ``python -c`` with: socket, upstream URL, relay (0/1).
BARE = """
import asyncio, sys
import sidecar
import aiohttp, grpc
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

address, url, relay = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

class Bare(sidecar_pb2_grpc.SidecarServicer):
    async def CallTool(self, request, context):
        body = b"{}"
        if relay:
            async with self.session.get(url) as response:
                body = await response.read()
        return sidecar_pb2.CallToolResponse(upstream_status=200, body=body)

async def main():
    bare = Bare()
    bare.session = aiohttp.ClientSession()
    server = grpc.aio.server()
    sidecar_pb2_grpc.add_SidecarServicer_to_server(bare, server)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def config(work: Path, upstream: int, name: str) -> dict[str, Any]:
    raw = sidecar_config(work, name, upstream, None)
    raw["providers"], raw["models"], raw["frontdoor"] = {}, {}, {}
    raw["identity"] |= {"mode": "static", "spiffe_id": SPIFFE_ID, "pod_tcp": False}
    raw["server"]["listen"] = [f"unix://{work}/{name}.sock"]
    return raw


async def open_loop_cpu(pid: int, address: str, args: argparse.Namespace) -> float:
    """µs of ``pid``'s CPU per CallTool at ``args.rate`` calls/s."""
    agent = Agent(address)
    request = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id":"7"}')

    async def call(index: int) -> None:
        await agent.stub(index).CallTool(request, timeout=10)

    try:
        await offer(call, 200, 1.0)  # warm up
        before = cpu_seconds([pid])
        step = await offer(call, args.rate, args.seconds)
        used = cpu_seconds([pid]) - before
    finally:
        await agent.close()
    if step.failures:
        raise RuntimeError(f"{step.failures} calls failed: {dict(step.why)}")
    return used / len(step.latencies) * 1e6


async def in_process(work: Path, upstream: int, args: argparse.Namespace) -> list[str]:
    import aiohttp
    import yaml

    from sidecar.app import Sidecar
    from sidecar.calls.common import ToolCall
    from sidecar.config import load_settings
    from sidecar.identity import CallContext

    raw = config(work, upstream, "inproc")
    (work / "inproc.yaml").write_text(yaml.safe_dump(raw))
    built = Sidecar.build(load_settings(str(work / "inproc.yaml")))
    await built.start()
    context = CallContext(metadata=(), peer="unix:", auth_context={})
    session = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{upstream}/tickets/7"

    async def guarded(index: int) -> None:
        arguments = json.dumps({"id": str(index) if args.distinct else "7"})
        result = await built.calls.tools.call(
            "CallTool",
            ToolCall(tool="tickets.get", arguments_json=arguments),
            context=context,
            time_remaining=10.0,
        )
        if result.code != "ok":
            raise RuntimeError(f"call refused: {result.code}")

    async def direct(_: int) -> None:
        async with session.get(url) as response:
            await response.read()

    out = []
    try:
        for name, fn in (("aiohttp GET alone", direct), ("ToolCalls.call (no gRPC)", guarded)):
            for index in range(300):
                await fn(index)  # warm up
            start = time.thread_time()
            for index in range(args.calls):
                await fn(index)
            per_call = (time.thread_time() - start) / args.calls * 1e6
            out.append(f"  {name:<34} {per_call:>8.0f}")
    finally:
        await session.close()
        await built.stop(0)
        built.close()
    return out


async def measure(args: argparse.Namespace, work: Path, upstream: int) -> list[str]:
    out = [
        f"CPU per CallTool, open loop at {args.rate}/s over a unix socket (µs, from /proc)",
    ]
    url = f"http://127.0.0.1:{upstream}/tickets/7"
    for name, relay in (("grpc (constant answer)", "0"), ("grpc+relay (one aiohttp GET)", "1")):
        address = f"unix:{work}/bare{relay}.sock"
        proc = subprocess.Popen(
            [sys.executable, "-c", BARE, address, url, relay], stdout=subprocess.PIPE, cwd=ROOT
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            out.append(f"  {name:<34} {await open_loop_cpu(proc.pid, address, args):>8.0f}")
        finally:
            proc.terminate()
            proc.wait(30)
    raw = config(work, upstream, "static")
    proc = serve(work, "static", raw)
    address = raw["server"]["listen"][0].replace("unix://", "unix:")
    try:
        wait_serving(address, proc, timeout_s=90)
        out.append(
            f"  {'agent-sidecar serve':<34} {await open_loop_cpu(proc.pid, address, args):>8.0f}"
        )
    finally:
        proc.terminate()
        proc.wait(30)
    kind = "distinct" if args.distinct else "repeated"
    out += ["", f"in one process, {args.calls} calls, {kind} arguments (µs of this thread's CPU)"]
    out += await in_process(work, upstream, args)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--distinct", action="store_true", help="no decision memo hits")
    args = parser.parse_args()
    return run_with_upstream(measure, args, "agent-sidecar-call-floor-")


if __name__ == "__main__":
    sys.exit(main())
