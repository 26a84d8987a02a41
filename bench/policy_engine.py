"""The embedded engine's cost per decision, where it goes, how it scales, and its memory.

Measured side by side in one run, on the shipped policy and a typical CallTool input:

* the decision (``EmbeddedEngine.evaluate_sync``): median and p99;
* its parts: the input handed over node by node (what the engine does) against the same input
  as a JSON term (what it did before), the Rego evaluation, the result parsed;
* a trivial allow-all policy, for the engine's fixed cost;
* decisions per second from 1 and 2 threads (rego-cpp releases the GIL while it evaluates);
* RSS before and after ``--soak`` decisions (100k by default) in this process, which imports
  grpc as the server does.

    python bench/policy_engine.py [--calls 5000] [--soak 100000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regopy.rego_shared import rego_bundle_query, rego_free_output, rego_output_string  # noqa: E402

import sidecar  # noqa: E402,F401  (first: the engine's library before grpc's)
from sidecar.policy import EmbeddedEngine  # noqa: E402
from sidecar.policy._rego_input import set_input  # noqa: E402

QUERY = "data.agentsidecar.authz.decision"
INPUT = {
    "version": 1,
    "request_id": "01J00000000000000000000000",
    "time_ns": 1_763_700_000_000_000_000,
    "subject": {
        "spiffe_id": "spiffe://demo.example/agent/support",
        "trust_domain": "demo.example",
        "attestation": "pod-svid",
        "claims": {},
    },
    "action": {
        "kind": "tool",
        "name": "payments.refund",
        "operation": "act",
        "target": "payments",
        "arguments": {"amount": 42.5, "currency": "EUR", "note": "refund for ticket 123"},
        "data_classes": [],
    },
    "task": {"id": "t-1", "intent": "refund", "calls": 3, "tokens": 0, "age_s": 4},
    "delegation": {"chain": [], "depth": 0},
}


def timed(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def fmt(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6
    return f"{p50:7.0f} {p99:7.0f}"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def throughput(engine: EmbeddedEngine, threads: int, seconds: float = 2.0) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def work(i: int) -> None:
        while not stop.is_set():
            engine.evaluate_sync(INPUT)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="timed calls (default 5000)")
    parser.add_argument("--soak", type=int, default=100_000, help="decisions for RSS (100000)")
    args = parser.parse_args()
    importlib.import_module("grpc")  # loaded as in the server (after sidecar: isort-proof)

    engine = EmbeddedEngine.from_dir(ROOT / "rego", QUERY, workers=2)
    compiled = engine._state.pool.get()
    engine._state.pool.put(compiled)
    interp, bundle = compiled._interp, compiled._bundle
    term = json.dumps(INPUT, ensure_ascii=False)

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.rego").write_text(
            'package p\n\nimport rego.v1\n\ndecision := {"effect": "allow", "reasons": []}\n'
        )
        trivial = EmbeddedEngine.from_dir(tmp, "data.p.decision", workers=1)

        def query() -> None:
            out = rego_bundle_query(interp._impl, bundle._impl)
            rego_output_string(out)
            rego_free_output(out)

        for _ in range(500):  # warm up
            engine.evaluate_sync(INPUT)
        rows = [
            ("decision (evaluate_sync)", timed(lambda: engine.evaluate_sync(INPUT), args.calls)),
            (
                "  input as nodes",
                timed(lambda: set_input(interp._impl, interp.set_input_term, INPUT), args.calls),
            ),
            (
                "  input as a JSON term (before)",
                timed(lambda: interp.set_input_term(term), args.calls),
            ),
            ("  Rego evaluation + output", timed(query, args.calls)),
            ("trivial policy decision", timed(lambda: trivial.evaluate_sync(INPUT), args.calls)),
        ]
        print(f"{'what':34} {'p50 µs':>7} {'p99 µs':>7}")
        for name, samples in rows:
            print(f"{name:34} {fmt(samples)}")
        one, two = throughput(engine, 1), throughput(engine, 2)
        print(f"decisions/s, 1 thread: {one:,.0f}; 2 threads: {two:,.0f} ({two / one:.2f}x)")
        trivial.close()

    before = rss_mb()
    started = time.perf_counter()
    for _ in range(args.soak):
        engine.evaluate_sync(INPUT)
    after = rss_mb()
    print(
        f"RSS over {args.soak:,} decisions: {before:.1f} MB -> {after:.1f} MB "
        f"({(after - before) * 1024 / args.soak:.3f} KB per decision; "
        f"{args.soak / (time.perf_counter() - started):,.0f}/s)"
    )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
