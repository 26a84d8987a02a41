"""The sidecar's whole footprint: resident memory summed over every process it runs, idle
and after 20k mixed calls (issue 26), with the shipped defaults.

A pod pays for every process of the sidecar (the supervisor, when there is one, and each
worker), so one worker's RSS says little: :func:`footprint` walks the process tree from the
process that was started and reads each ``/proc/PID/smaps``, mapping by mapping. Three sums:

- **pod alone** (the figure the budget is read against): what the tree holds when no process
  outside it shares its files, as in a pod where the sidecar's container image is mapped by the
  sidecar alone. Private pages count in full; a file page shared between processes is split
  between the *sidecar's* processes that map that file (not the host's); an anonymous page
  counts its PSS (the sidecar forks nothing: its anonymous pages are its own).
- RSS: every page each process maps, shared ones counted once per process (an upper bound).
- host PSS: the kernel's split among every process on the host. It falls when other processes
  map the same files (the bench's own driver, upstreams and any other run of this venv), so
  on a shared machine it understates what a pod holds; printed for comparison only.

Memory figures are robust to a busy machine. ``--speed N`` adds, after the memory figures
(so they are unchanged by it), what a lever that touches threads or workers may cost: CallTool
p50 at concurrency 1 and Check calls/s at concurrency 32, N calls each, on the same sidecar.
Latency is not robust to a busy machine: compare runs made alternately, a few minutes apart.

The run: the development Workload API, the bench upstream (tools and a model provider), an
MCP upstream over HTTP, and ``agent-sidecar serve`` on the demo's configuration with the
server section at its defaults (identity mode pod, the baseline policy on the embedded
engine, audit, state, approvals, front door and MCP endpoint on). Measured once it serves and
before any call (idle), then after ``--calls`` calls spread evenly over CallTool, Check,
model calls unary and streamed through the front door, and MCP ``tools/call``.

    python bench/footprint.py [--calls 20000] [--concurrency 8] [--workers N] [--shape k8s]
        [--set KEY=VALUE ...] [--speed N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Footprint", "Mapping", "ProcessMemory", "footprint", "parse_smaps", "process_tree"]

KIB_PER_MB = 1024
# A /proc/PID/smaps mapping header: "start-end perms offset dev inode [path]".
_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ [0-9a-f]+ ([0-9a-f]+:[0-9a-f]+) (\d+)\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    """One mapping of one process (kB): ``file`` is (device, inode), None for anonymous
    memory (heap, stacks, ``[vdso]``)."""

    file: tuple[str, int] | None
    path: str
    rss_kib: int
    pss_kib: int
    private_kib: int
    shared_kib: int


def parse_smaps(text: str) -> tuple[Mapping, ...]:
    """The mappings of a ``/proc/PID/smaps`` text. A field line that is malformed counts as
    0 kB; a mapping header that is malformed starts nothing (its fields are dropped)."""
    found: list[Mapping] = []
    current: dict[str, int] | None = None
    file: tuple[str, int] | None = None
    path = ""

    def close() -> None:
        if current is not None:
            private = current.get("Private_Clean", 0) + current.get("Private_Dirty", 0)
            shared = current.get("Shared_Clean", 0) + current.get("Shared_Dirty", 0)
            found.append(
                Mapping(file, path, current.get("Rss", 0), current.get("Pss", 0), private, shared)
            )

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            close()
            inode = int(header.group(2))
            file = (header.group(1), inode) if inode else None
            path, current = header.group(3), {}
            continue
        name, sep, value = line.partition(":")
        if current is None or not sep or name.startswith("VmFlags"):
            continue
        parts = value.split()
        current[name] = int(parts[0]) if parts and parts[0].isdigit() else 0
    close()
    return tuple(found)


@dataclass(frozen=True)
class ProcessMemory:
    """One process: its resident, proportional (host) and private set sizes (MB), and its
    mappings (for the pod-alone sum over the tree)."""

    pid: int
    command: str
    rss_mb: float
    pss_mb: float
    uss_mb: float
    mappings: tuple[Mapping, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class Footprint:
    """Every process of a tree, and their sums."""

    processes: tuple[ProcessMemory, ...]

    @property
    def rss_mb(self) -> float:
        return sum(p.rss_mb for p in self.processes)

    @property
    def pss_mb(self) -> float:
        """Host PSS: shared pages split with every process on the host, in or out of the tree."""
        return sum(p.pss_mb for p in self.processes)

    @property
    def uss_mb(self) -> float:
        """Pages no other process maps: a lower bound."""
        return sum(p.uss_mb for p in self.processes)

    @property
    def pod_mb(self) -> float:
        """What the tree holds when nothing outside it maps its files (module docstring)."""
        return self.file_mb() + self._anonymous_kib() / KIB_PER_MB

    def file_mb(self, path_endswith: str = "") -> float:
        """The pod-alone share of file mappings (those whose path ends with ``path_endswith``):
        private pages in full, shared ones split among the tree's processes mapping the file."""
        mappers: dict[tuple[str, int], set[int]] = {}
        for process in self.processes:
            for mapping in process.mappings:
                if mapping.file is not None:
                    mappers.setdefault(mapping.file, set()).add(process.pid)
        kib = 0.0
        for process in self.processes:
            for m in process.mappings:
                if m.file is not None and m.path.endswith(path_endswith):
                    kib += m.private_kib + m.shared_kib / len(mappers[m.file])
        return kib / KIB_PER_MB

    def _anonymous_kib(self) -> int:
        return sum(m.pss_kib for p in self.processes for m in p.mappings if m.file is None)

    def summary(self) -> str:
        """The sums (pod alone first: the budget's figure), then each process's RSS."""
        each = " + ".join(f"{p.rss_mb:.1f}" for p in self.processes)
        return (
            f"pod alone {self.pod_mb:6.1f} MB  RSS {self.rss_mb:6.1f} MB  "
            f"host PSS {self.pss_mb:6.1f} MB  USS {self.uss_mb:6.1f} MB  "
            f"{len(self.processes)} process(es), RSS each: {each}"
        )


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return int(stat.rpartition(")")[2].split()[1])  # after "(comm)": state, ppid


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return tree


def _memory(pid: int) -> ProcessMemory | None:
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if not command:  # a zombie: nothing mapped any more
        return None
    mappings = parse_smaps(smaps)
    rss, pss, uss = (
        sum(getattr(m, name) for m in mappings) / KIB_PER_MB
        for name in ("rss_kib", "pss_kib", "private_kib")
    )
    return ProcessMemory(pid, command.strip(), rss, pss, uss, mappings)


def footprint(root: int) -> Footprint:
    """The memory of ``root`` and all its descendants (processes that exit meanwhile are
    left out)."""
    found = (_memory(pid) for pid in process_tree(root))
    return Footprint(tuple(m for m in found if m is not None))


def wait_complete(state_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """With workers, wait (bounded) until all of them serve: idle means every process up."""
    sys.path.insert(0, str(ROOT))
    from sidecar.workers import WorkersStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        status = WorkersStatus.read(state_dir)
        if status is None or status.complete:
            return
        time.sleep(0.1)
    raise SystemExit("the sidecar's workers did not all serve")


def grpc_calls(agent: Any) -> tuple[Any, Any]:
    """The mix's two gRPC calls (CallTool, Check of ``tickets.get``), by index."""
    from sidecar._proto.agentsidecar.v1 import sidecar_pb2

    tool = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id":"7"}')
    check = sidecar_pb2.CheckRequest(tool="tickets.get", arguments_json='{"id":"7"}')

    async def call_tool(index: int) -> None:
        await agent.stub(index).CallTool(tool, timeout=10)

    async def decide(index: int) -> None:
        await agent.stub(index).Check(check, timeout=10)

    return call_tool, decide


async def speed(agent: Any, calls: int) -> str:
    """CallTool p50 (ms) at concurrency 1 and Check calls/s at concurrency 32."""
    from bench.hot_path import load
    from bench.relay_overhead import percentile

    call_tool, decide = grpc_calls(agent)
    tool_ms, _, tool_failed = await load(call_tool, calls, 1)
    checks, seconds, check_failed = await load(decide, calls, 32)
    p50 = f"{percentile(tool_ms, 50):.2f} ms" if tool_ms else "-"
    return (
        f"  speed: CallTool c=1 p50 {p50} ({tool_failed} failed), "
        f"Check c=32 {len(checks) / seconds:.0f} calls/s ({check_failed} failed), "
        f"{calls} calls each"
    )


async def mixed_load(
    targets: dict[str, Any], calls: int, concurrency: int
) -> tuple[int, dict[str, int], dict[str, str]]:
    """``calls`` calls, round-robin over the kinds in ``targets``: how many succeeded, the
    failures by kind, and the first failure of each kind (its type and message)."""
    kinds = itertools.cycle(sorted(targets))
    counter = iter(range(calls))
    done, failures, first = 0, dict.fromkeys(targets, 0), {}

    async def caller(index: int) -> None:
        nonlocal done
        for _ in counter:
            kind = next(kinds)
            try:
                await targets[kind](index)
                done += 1
            except Exception as exc:
                failures[kind] += 1
                first.setdefault(kind, f"{type(exc).__name__}: {str(exc)[:120]}")

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return done, failures, first


def start_mcp_upstream() -> tuple[subprocess.Popen[bytes], int]:
    from examples.demo.run import free_port

    port = free_port()
    command = [sys.executable, "-m", "tests.support.mcp_upstream", "notes", "--http", str(port)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL), port


async def measure(args: argparse.Namespace, work: Path, upstream: int) -> list[str]:
    import aiohttp
    import yaml
    from mcp import Client

    from bench.hot_path import MESSAGES, Agent, serve, sidecar_config
    from examples.demo.run import free_port, wait_serving

    config = sidecar_config(work, "footprint", upstream, args.workers)
    extra: list[subprocess.Popen[bytes]] = []
    if args.shape == "k8s":  # k8s/base/agents/config.yaml: no front door, no MCP endpoint
        config["frontdoor"], config["providers"], config["models"] = {}, {}, {}
    else:
        mcp_upstream, mcp_upstream_port = start_mcp_upstream()
        extra.append(mcp_upstream)
        mcp_port = free_port()
        config["targets"]["notes-mcp"] = {"base_url": f"http://127.0.0.1:{mcp_upstream_port}"}
        config["mcp"] = {"listen": f"127.0.0.1:{mcp_port}"}
        config["mcp_servers"] = {
            "notes": {"target": "notes-mcp", "tools": {"search": {"operation": "read"}}}
        }
    for item in args.set:  # --set policy.workers=1: measure one lever
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        section = config
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = yaml.safe_load(value)
    sidecar = serve(work, "footprint", config)
    address = config["server"]["listen"][0]
    out: list[str] = []
    try:
        wait_serving(address, sidecar, timeout_s=120)
        wait_complete(work / "footprint" / "state", sidecar)
        idle = footprint(sidecar.pid)
        agent = Agent(address)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        call_tool, decide = grpc_calls(agent)
        targets: dict[str, Any] = {"CallTool": call_tool, "Check": decide}
        async with contextlib.AsyncExitStack() as stack:
            if args.shape == "demo":
                door = f"http://{config['frontdoor']['listen']}/v1"

                def model(stream: bool) -> Any:
                    body = {"model": "local-small", "messages": json.loads(MESSAGES)}
                    payload = json.dumps(body | {"stream": stream}).encode()

                    async def call(_: int) -> None:
                        async with session.post(
                            door + "/chat/completions",
                            data=payload,
                            headers={"Content-Type": "application/json"},
                        ) as response:
                            await response.read()
                            response.raise_for_status()

                    return call

                mcp = await stack.enter_async_context(
                    Client(f"http://127.0.0.1:{mcp_port}/mcp", mode="2026-07-28")
                )

                async def mcp_call(_: int) -> None:
                    result = await mcp.call_tool("notes.search", {"query": "refund policy"})
                    if result.is_error:
                        raise RuntimeError("tools/call answered an error")

                targets |= {
                    "model unary": model(False),
                    "model stream": model(True),
                    "MCP tools/call": mcp_call,
                }
            done, failures, first = await mixed_load(targets, args.calls, args.concurrency)
        after = footprint(sidecar.pid)
        rates = [await speed(agent, args.speed)] if args.speed else []
        await session.close()
        await agent.close()
        failed = ", ".join(f"{k} {v}" for k, v in failures.items() if v) or "none failed"
        out += [
            f"whole sidecar, every process ({args.shape} shape, "
            f"server.workers: {args.workers or 'default'}"
            f"{''.join(', ' + item for item in args.set)})",
            f"  idle                {idle.summary()}",
            f"  after {done:>6} calls {after.summary()}   ({failed})",
            f"  mix: {', '.join(targets)}, round-robin, concurrency {args.concurrency}",
            *(f"  first {kind} failure: {text}" for kind, text in first.items()),
            *rates,
        ]
    finally:
        for process in (sidecar, *extra):
            process.terminate()
            process.wait(30)
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import sidecar  # noqa: F401  (before grpc: the engine's load order)
    from bench.hot_path import run_with_upstream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, help="server.workers (default: its default)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value (YAML) over the shape's, e.g. policy.workers=1",
    )
    parser.add_argument(
        "--speed",
        type=int,
        default=0,
        metavar="N",
        help="after the memory figures: CallTool p50 (c=1) and Check calls/s (c=32), N calls each",
    )
    parser.add_argument(
        "--shape",
        choices=["demo", "k8s"],
        default="demo",
        help="demo: examples/demo/config.yaml (front door, MCP endpoint); k8s: "
        "k8s/base/agents/config.yaml's components (neither; CallTool and Check only)",
    )
    return run_with_upstream(measure, parser.parse_args(), "agent-sidecar-footprint-")


if __name__ == "__main__":
    sys.exit(main())
