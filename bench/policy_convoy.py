"""The GIL convoy behind the pod-mode cliff (issue 26; docs/performance.md): how long the
embedded engine takes to answer, inline vs in its threads, while the event loop is idle and
while it is busy with other calls' Python (as at load).

In threads, rego-cpp evaluates without the GIL, but returning the answer needs it back from
the event loop, which a busy loop gives up only every ``sys.getswitchinterval()`` (5 ms): the
answer waits for that, whatever the policy costs. Inline, there is no hand-off.

    python bench/policy_convoy.py [--decisions 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.relay_overhead import percentile  # noqa: E402
from sidecar.policy.embedded import EmbeddedEngine  # noqa: E402

INPUT = {
    "version": 1,
    "request_id": "01M91M57AYQRPMAJ8HM88PSABC",
    "time_ns": 1796424768862895373,
    "subject": {
        "spiffe_id": "spiffe://demo.example/agent/support",
        "trust_domain": "demo.example",
        "attestation": "pod-svid",
        "claims": {},
        "expires_at": 1796428334,
    },
    "action": {
        "kind": "tool",
        "name": "tickets.get",
        "operation": "read",
        "target": "tickets",
        "arguments": {"id": "7"},
        "data_classes": [],
    },
    "delegation": {"chain": [], "depth": 0},
}


async def answers(engine: EmbeddedEngine, busy: float, decisions: int) -> list[float]:
    """Decision latencies (ms) while 8 tasks keep the loop ``busy`` (a share of its time)."""
    stop = False

    async def other_calls() -> None:
        while not stop:
            started = time.perf_counter()
            while time.perf_counter() - started < 0.0004 * busy:
                pass
            await asyncio.sleep(0.0004 * (1 - busy))

    load = [asyncio.create_task(other_calls()) for _ in range(8)]
    latencies = []
    for _ in range(decisions):
        started = time.perf_counter()
        await engine.evaluate(INPUT, timeout_s=30)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.001)
    stop = True
    await asyncio.gather(*load)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=400)
    args = parser.parse_args()
    switch = sys.getswitchinterval() * 1000
    print(f"baseline policy, one decision at a time (sys.getswitchinterval() {switch:.1f} ms)")
    print(f"{'engine':<10} {'event loop':<12} {'p50 ms':>8} {'p99 ms':>9}")
    for name, inline_max_ms in (("inline", 5.0), ("threads", 0.0)):
        engine = EmbeddedEngine.from_dir(
            ROOT / "rego", "data.agentsidecar.authz.decision", inline_max_ms=inline_max_ms
        )
        try:
            for busy in (0.0, 0.9):
                ms = asyncio.run(answers(engine, busy, args.decisions))
                state = "idle" if busy == 0 else f"{busy:.0%} busy"
                print(
                    f"{name:<10} {state:<12} {percentile(ms, 50):>8.2f} {percentile(ms, 99):>9.2f}"
                )
        finally:
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
