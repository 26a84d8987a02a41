"""What A2A through two sidecars adds: one ``SendMessage`` (``message/send`` in 0.3) with the
official a2a-sdk client, straight to agent B and through A's outbound endpoint and B's inbound
listener (mutual TLS between the sidecars), side by side in one run, next to what one tool
call through one sidecar adds (the tool relay), with the target: A2A overhead <= 2x the tool
relay's (issue 34).

Both sidecars are ``agent-sidecar serve`` processes with their own SVIDs
(examples/demo/a2a_pair.py) deciding with the baseline policy and writing audit records;
agent B is a real a2a-sdk server; this process is agent A (one SDK client per path, its card
resolved once). Rounds alternate the four paths so that machine noise hits them alike.

    python bench/a2a_overhead.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from a2a.client import ClientConfig, create_client  # noqa: E402
from a2a.types import Message, Part, Role, SendMessageRequest  # noqa: E402

from bench.relay_overhead import percentile  # noqa: E402
from examples.demo.a2a_pair import records, start_pair  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402
from tests.support.a2a_agents import A2aAgent, echo  # noqa: E402

ROUND = 10  # calls per path per round


def cpu_clock(pid: int) -> int:
    """The CPU-time clock of another process (Linux ``MAKE_PROCESS_CPUCLOCK(pid, SCHED)``):
    nanoseconds of CPU it has used, whatever else the shared machine runs."""
    return ((~pid) << 3) | 2


def cpu_ns(clock: int) -> int:
    return time.clock_gettime_ns(clock)


async def _a2a_client(url: str, http: httpx.AsyncClient) -> Any:
    return await create_client(url, client_config=ClientConfig(streaming=False, httpx_client=http))


async def _send(client: Any, i: int) -> float:
    message = Message(role=Role.ROLE_USER, message_id=f"b-{i}", parts=[Part(text="order A-7")])
    message.metadata.update({"skill": "lookup"})  # a read skill: no task needed
    started = time.perf_counter()
    async for _ in client.send_message(SendMessageRequest(message=message)):
        pass
    return (time.perf_counter() - started) * 1000


def _tool_direct(http: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    http.get(f"{url}/kb/search", params={"q": "refund"}).raise_for_status()
    return (time.perf_counter() - started) * 1000


def _tool_sidecar(client: SidecarClient) -> float:
    started = time.perf_counter()
    client.call_tool("kb.search", {"q": "refund"})
    return (time.perf_counter() - started) * 1000


async def measure(calls: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    times: dict[str, list[float]] = {
        k: [] for k in ("a2a_direct", "a2a_sidecars", "tool_direct", "tool_sidecar")
    }
    # CPU (ms) each sidecar process spends per call: A's and B's A2A pass, A's tool relay
    cpu: dict[str, int] = {"a2a A": 0, "a2a B": 0, "tool": 0}
    with tempfile.TemporaryDirectory() as tmp, ToolServer() as tools:
        agent = A2aAgent("billing", {"lookup": echo("found")})
        pair = start_pair(
            Path(tmp), agent_url=agent.url, card=agent.card_dict(), tools_url=tools.url
        )
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                direct = await _a2a_client(agent.url, http)
                via = await _a2a_client(pair.peer_url, http)
                with (
                    httpx.Client(timeout=30) as plain,
                    SidecarClient(pair.support.address, timeout_s=30) as sc,
                ):
                    for i in range(30):  # warm up: connections, TLS sessions, first evaluations
                        await _send(direct, i), await _send(via, i)
                        _tool_direct(plain, tools.url), _tool_sidecar(sc)
                    a_clock = cpu_clock(pair.support.proc.pid)  # type: ignore[union-attr]
                    b_clock = cpu_clock(pair.billing.proc.pid)  # type: ignore[union-attr]
                    for r in range(max(1, calls // ROUND)):
                        for i in range(ROUND):
                            times["a2a_direct"].append(await _send(direct, r * ROUND + i))
                            a0, b0 = cpu_ns(a_clock), cpu_ns(b_clock)
                            times["a2a_sidecars"].append(await _send(via, r * ROUND + i))
                            cpu["a2a A"] += cpu_ns(a_clock) - a0
                            times["tool_direct"].append(_tool_direct(plain, tools.url))
                            t0 = cpu_ns(a_clock)
                            times["tool_sidecar"].append(_tool_sidecar(sc))
                            cpu["tool"] += cpu_ns(a_clock) - t0
                            # B works on after its answer (its audit record): until here
                            cpu["a2a B"] += cpu_ns(b_clock) - b0
            inside = inside_the_sidecars(pair)
            n = len(times["a2a_sidecars"])
            inside |= {f"CPU per call {k}": v / n / 1e6 for k, v in cpu.items()}
        finally:
            pair.stop()
            agent.stop()
    return times, inside


def report(times: dict[str, list[float]], inside: dict[str, float]) -> str:
    p = {k: (percentile(v, 50), percentile(v, 95)) for k, v in times.items()}
    a2a = p["a2a_sidecars"][0] - p["a2a_direct"][0]
    tool = p["tool_sidecar"][0] - p["tool_direct"][0]
    rows = [
        ("A2A direct (SDK client -> agent B)", "a2a_direct"),
        ("A2A via A outbound + B inbound (mTLS)", "a2a_sidecars"),
        ("tool direct (HTTP GET)", "tool_direct"),
        ("tool via one sidecar (gRPC CallTool)", "tool_sidecar"),
    ]
    n = len(times["a2a_direct"])
    lines = [f"A2A message/send through both sidecars vs direct ({n} calls each, ms)"]
    lines.append(f"{'path':<44} {'p50':>8} {'p95':>8}")
    lines += [f"{label:<44} {p[key][0]:>8.2f} {p[key][1]:>8.2f}" for label, key in rows]
    lines.append(f"added by the two sidecars (A2A, p50): {a2a:.2f} ms")
    lines.append(f"added by the tool relay (p50): {tool:.2f} ms")
    met = "met" if tool > 0 and a2a <= 2 * tool else "NOT met"
    lines.append(f"ratio {a2a / tool if tool > 0 else float('inf'):.2f}x (target <= 2x): {met}")
    audited = {k: v for k, v in inside.items() if not k.startswith("CPU")}
    lines.append(
        "inside the sidecars (audit latency_ms, p50): "
        + ", ".join(f"{k} {v:.2f}" for k, v in audited.items())
    )
    lines.append(
        "sidecar CPU per call (ms, mean): "
        + ", ".join(f"{k[13:]} {v:.3f}" for k, v in inside.items() if k.startswith("CPU"))
    )
    return "\n".join(lines)


def inside_the_sidecars(pair: Any) -> dict[str, float]:
    """Median ``latency_ms`` of the audit records: where the added time is spent (the tool
    call's too: each sidecar's A2A pass is compared with one tool relay)."""
    out = {}
    for side, kind in (
        (pair.support, "a2a"),
        (pair.billing, "a2a_inbound"),
        (pair.support, "tool"),
    ):
        found = [r["latency_ms"] for r in records(side.audit_path) if r["action"]["kind"] == kind]
        for part in ("decide", "relay", "total"):
            values = [t[part] for t in found if isinstance(t.get(part), (int, float))]
            if values:
                out[f"{side.name} {kind} {part}"] = percentile(values, 50)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    print(report(*asyncio.run(measure(args.calls))))
    print(f"load average (1 min) before/after: {before:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
