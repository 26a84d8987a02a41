"""The embedded engine (rego-cpp) against OPA's own Go engine in-process, side by side.

Each engine is measured in its own fresh child process (so RSS and thread counts are its
own), on the shipped policy and the typical CallTool input of ``bench/policy_engine.py``:

* load: wall time to compile the policy (what ``serve`` and every reload pay);
* one decision: p50 / p99 (embedded: ``evaluate_sync``; OPA: ``eval_document`` of the
  decision, JSON in and out through ctypes, which is what a runtime engine would do);
* decisions/s at saturation from 1 and 2 threads (OPA: one engine per thread, because an
  engine serializes its evaluations; ctypes releases the GIL during the call);
* RSS and OS threads: bare interpreter (sidecar and grpc imported), after load, after the soak;
* fork: the engine is loaded and has decided once, then ``os.fork()``; the child decides
  again under a watchdog (ok / hang / crash). And the supervisor's way: a fresh process
  (``subprocess``, as ``server.workers`` starts workers) loading its own engine.

    python bench/policy_engine_vs_opa.py [--calls 5000] [--soak 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUERY = "data.agentsidecar.authz.decision"
FORK_WATCHDOG_S = 20
FORK_DECISIONS = 5000  # enough for the Go runtime to collect garbage in the child


def _input() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from policy_engine import INPUT

    return INPUT


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def pct(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1e6,
        ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6,
    )


class _Embedded:
    def __init__(self) -> None:
        from sidecar.policy import EmbeddedEngine

        self.engine = EmbeddedEngine.from_dir(ROOT / "rego", QUERY, workers=2)

    def decide(self, doc: dict[str, Any]) -> Any:
        return self.engine.evaluate_sync(doc).value

    def per_thread(self) -> _Embedded:
        return self  # a pool of 2 interpreters inside


class _Opa:
    def __init__(self) -> None:
        from opa_bindings import OpaEngine

        from sidecar.policy.source import load_policy_dir

        source = load_policy_dir(ROOT / "rego")
        self.engine = OpaEngine()
        for module in source.modules:
            self.engine.add_policy(module.path, module.source)
        self.engine.add_data(dict(source.data))
        self.path = QUERY.removeprefix("data.")
        self.engine.eval_document(self.path, {})  # compile now (OPA compiles lazily)

    def decide(self, doc: dict[str, Any]) -> Any:
        return self.engine.eval_document(self.path, doc)

    def per_thread(self) -> _Opa:
        return _Opa()


def _saturate(engines: list[Any], doc: dict[str, Any], seconds: float = 2.0) -> float:
    stop = threading.Event()
    counts = [0] * len(engines)

    def work(i: int) -> None:
        while not stop.is_set():
            engines[i].decide(doc)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(engines))]
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def _fork_decides(engine: Any, doc: dict[str, Any]) -> str:
    """Fork a loaded engine; the child decides ``FORK_DECISIONS`` times.
    'ok', 'hang' or 'crash (...)'."""
    expected = json.dumps(engine.decide(doc), sort_keys=True)
    pid = os.fork()
    if pid == 0:  # child: decide, exit 0 if the same answer, 3 otherwise
        try:
            same = all(
                json.dumps(engine.decide(doc), sort_keys=True) == expected
                for _ in range(FORK_DECISIONS)
            )
            os._exit(0 if same else 3)
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + FORK_WATCHDOG_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return f"crash ({signal.Signals(os.WTERMSIG(status)).name})"
            code = os.WEXITSTATUS(status)
            return {0: "ok", 3: "wrong answer", 4: "error"}.get(code, f"exit {code}")
        threading.Event().wait(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return f"hang (killed after {FORK_WATCHDOG_S} s)"


def measure(which: str, calls: int, soak: int) -> dict[str, Any]:
    import sidecar  # noqa: F401  (regopy before grpc, as in serve)

    __import__("grpc")
    doc = _input()
    out: dict[str, Any] = {"engine": which, "rss_bare": rss_mb(), "threads_bare": threads()}
    started = time.perf_counter()
    engine = _Embedded() if which == "embedded" else _Opa()
    out["load_ms"] = (time.perf_counter() - started) * 1000
    out["rss_loaded"], out["threads_loaded"] = rss_mb(), threads()
    for _ in range(500):
        engine.decide(doc)
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        engine.decide(doc)
        samples.append(time.perf_counter() - t0)
    out["p50_us"], out["p99_us"] = pct(samples)
    out["per_s_1"] = _saturate([engine], doc)
    out["per_s_2"] = _saturate([engine, engine.per_thread()], doc)
    before = rss_mb()
    for _ in range(soak):
        engine.decide(doc)
    out["rss_soak_before"], out["rss_soak_after"] = before, rss_mb()
    out["threads_after"] = threads()
    out["fork"] = _fork_decides(engine, doc)
    out["decision"] = engine.decide(doc)
    return out


def _child(which: str, calls: int, soak: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", which, "--calls", str(calls), "--soak", str(soak)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{which}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--soak", type=int, default=20_000)
    parser.add_argument("--child", choices=("embedded", "opa"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.calls, args.soak)))
        return 0
    emb, opa = _child("embedded", args.calls, args.soak), _child("opa", args.calls, args.soak)
    same = json.dumps(emb["decision"], sort_keys=True) == json.dumps(
        opa["decision"], sort_keys=True
    )
    rows = [
        ("load (compile shipped policy) ms", "load_ms", "{:.0f}"),
        ("one decision p50 µs", "p50_us", "{:.0f}"),
        ("one decision p99 µs", "p99_us", "{:.0f}"),
        ("decisions/s, 1 thread", "per_s_1", "{:,.0f}"),
        ("decisions/s, 2 threads", "per_s_2", "{:,.0f}"),
        ("RSS bare (sidecar+grpc) MB", "rss_bare", "{:.1f}"),
        ("RSS engine loaded MB", "rss_loaded", "{:.1f}"),
        (f"RSS after {args.soak:,} more decisions MB", "rss_soak_after", "{:.1f}"),
        ("OS threads bare", "threads_bare", "{}"),
        ("OS threads engine loaded", "threads_loaded", "{}"),
        ("OS threads after load+2 threads", "threads_after", "{}"),
        (f"os.fork(), child decides {FORK_DECISIONS:,}x", "fork", "{}"),
    ]
    print(f"{'':40} {'embedded':>12} {'OPA in-proc':>12}")
    for label, key, fmt in rows:
        print(f"{label:40} {fmt.format(emb[key]):>12} {fmt.format(opa[key]):>12}")
    print(f"same decision on both: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
