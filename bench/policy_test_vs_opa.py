"""``agent-sidecar policy test rego/`` against OPA's own engine running the same tests.

Both as fresh processes on the shipped tests (issue 30, deliverable 5): wall time, CPU time
(user+system, the process and its children), peak RSS of the largest single process (GNU
``time``'s maximum resident set size), and the peak of the whole process tree's RSS summed
(sampled from /proc every 20 ms: the runner, its test workers and OPA's compiler process):

    python bench/policy_test_vs_opa.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_OPA_RUNNER = """
import sys
from opa_bindings import OpaEngine
sys.path.insert(0, {root!r})
from sidecar.policy.source import load_policy_dir
from sidecar.policy.testing import discover_tests
source = load_policy_dir({rego!r}, include_tests=True)
engine = OpaEngine()
for m in source.modules:
    engine.add_policy(m.path, m.source)
engine.add_data(dict(source.data))
cases = [c for c in discover_tests({rego!r}) if not c.name.startswith("todo_")]
passed = sum(bool(engine.eval_query(f"__t = {{c.ref}}; __t == true")) for c in cases)
print(f"{{passed}}/{{len(cases)}} passed")
"""


def _tree_rss_kb(root: int) -> int:
    """RSS of ``root`` and all its descendants, summed, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier += [child for child, parent in parents.items() if parent == pid]
    return total


def _run(cmd: list[str]) -> tuple[float, float, float, float, str]:
    """Wall seconds, CPU seconds, peak single-process RSS MB, peak process-tree RSS MB, last
    output line."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "maxrss_kb=%M cpu_s=%U+%S", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.wait(0.02):
            peak_tree = max(peak_tree, _tree_rss_kb(proc.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    tail = stderr.rsplit("maxrss_kb=", 1)[1].split()
    peak = int(tail[0]) / 1024
    user, system = tail[1].removeprefix("cpu_s=").split("+")
    out = (stdout.strip().splitlines() or ["?"])[-1]
    return wall, float(user) + float(system), peak, peak_tree / 1024, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rego = str(ROOT / "rego")
    opa_cmd = [sys.executable, "-c", _OPA_RUNNER.format(root=str(ROOT), rego=rego)]
    ours_cmd = [sys.executable, "-m", "sidecar.cli", "policy", "test", rego]
    opa, ours = [], []
    for _ in range(args.runs):  # interleaved, so both see the same load on the machine
        opa.append(_run(opa_cmd))
        ours.append(_run(ours_cmd))
    for name, runs in (("OPA's engine (in-process)", opa), ("agent-sidecar policy test", ours)):
        walls = [r[0] for r in runs]
        print(
            f"{name:28} wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}), "
            f"CPU median {statistics.median(r[1] for r in runs):.2f} s, "
            f"peak RSS {max(r[2] for r in runs):.0f} MB (process), "
            f"{max(r[3] for r in runs):.0f} MB (process tree): {runs[-1][4]}"
        )
    for what, index in (("wall time", 0), ("CPU time", 1)):
        ratio = statistics.median(r[index] for r in ours) / statistics.median(r[index] for r in opa)
        print(f"{what} ratio: {ratio:.2f}x")
    for what, index in (("peak RSS (process)", 2), ("peak RSS (process tree)", 3)):
        ratio = max(r[index] for r in ours) / max(r[index] for r in opa)
        print(f"{what} ratio: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
