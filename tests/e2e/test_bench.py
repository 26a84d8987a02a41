"""The relay benchmark runs and reports both paths (figures themselves are not asserted:
timings on shared machines are noise; `make bench` is where they are read)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_relay_overhead_bench_reports_direct_and_sidecar():
    done = subprocess.run(
        [sys.executable, "bench/relay_overhead.py", "--calls", "40", "--concurrency", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("direct ") for line in lines)
    assert any(line.startswith("sidecar ") for line in lines)
    assert "added latency: p50 +" in done.stdout or "added latency: p50 " in done.stdout
    assert any(line.startswith("+task ") for line in lines)
    assert "audit records written: 130" in done.stdout  # 2 x 40 measured + 50 warm-up


def test_model_overhead_bench_reports_direct_and_front_door():
    done = subprocess.run(
        [sys.executable, "bench/model_overhead.py", "--calls", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "unary   added latency: p50" in done.stdout
    assert "stream  added latency: p50" in done.stdout
    assert "audit records written: 60" in done.stdout  # 2 x (10 measured + 20 warm-up)


def test_hot_path_bench_prints_its_whole_table():
    done = subprocess.run(
        [sys.executable, "bench/hot_path.py", "--scale", "0.01", "--soak-calls", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("sidecar     c=32", "front door  stream c=1", "allow-all policy"):
        assert line in out, out
    assert set(re.findall(r"(\d+) failed", out)) <= {"0"}, out  # every measured call succeeded
    assert "RSS after    200 Checks" in out and "threads after" in out
