"""``agent-sidecar policy test rego/`` against OPA's own engine running the same tests.

Both as fresh processes, wall time and peak RSS (GNU ``time``'s maximum resident set size),
on the shipped tests (issue 30, deliverable 5):

    python bench/policy_test_vs_opa.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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


def _run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MB (GNU time: the process, or its largest waited-for worker),
    last output line."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", *cmd],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    wall = time.perf_counter() - started
    peak = int(proc.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    out = (proc.stdout.strip().splitlines() or ["?"])[-1]
    return wall, peak, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rego = str(ROOT / "rego")
    opa_cmd = [sys.executable, "-c", _OPA_RUNNER.format(root=str(ROOT), rego=rego)]
    ours_cmd = [sys.executable, "-m", "sidecar.cli", "policy", "test", rego]
    opa = [_run(opa_cmd) for _ in range(args.runs)]
    ours = [_run(ours_cmd) for _ in range(args.runs)]
    for name, runs in (("OPA's engine (in-process)", opa), ("agent-sidecar policy test", ours)):
        walls = [r[0] for r in runs]
        print(
            f"{name:28} wall median {statistics.median(walls):.2f} s "
            f"(min {min(walls):.2f}), peak RSS {max(r[1] for r in runs):.0f} MB: {runs[-1][2]}"
        )
    ratio = statistics.median(r[0] for r in ours) / statistics.median(r[0] for r in opa)
    print(f"time ratio: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
