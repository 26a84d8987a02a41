"""The relay benchmark runs and reports both paths (figures themselves are not asserted:
timings on shared machines are noise; `make bench` is where they are read)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

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


API_ROWS = (
    "chat unary",
    "chat stream",
    "responses unary",
    "responses stream",
    "embeddings",
    "messages unary",
    "messages stream",
)


def run_model_bench(*extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(sys.executable, "bench/model_overhead.py"),
            *("--calls", "6", "--concurrency", "4", "--warmup", "2", *extra),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )


def table_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """``(api, callers) -> cells`` of the markdown table the bench prints."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] in API_ROWS:
            rows[(cells[0], cells[1])] = cells
    return rows


def test_model_overhead_bench_without_litellm_reports_every_api_and_says_how_to_add_it(
    tmp_path,
):
    """CI has no LiteLLM (the heavy `bench` extra): the bench still measures direct and the
    front door for every API and prints, in LiteLLM's column, how to install it."""
    done = run_model_bench("--litellm", str(tmp_path / "no-such-dir" / "litellm"))
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert set(rows) == {(api, "1") for api in API_ROWS} | {("chat unary", "4")}, done.stdout
    for api, _callers, direct, door, litellm in rows.values():
        assert re.fullmatch(r"[\d.]+ / [\d.]+", direct), (api, direct)
        assert re.fullmatch(r"[+-][\d.]+ / [+-][\d.]+", door), (api, door)
        assert litellm == "not installed (pip install '.[bench]')", (api, litellm)
    assert "messages unary   added: p50" in done.stdout
    assert "chat unary c=4   added: p50" in done.stdout
    # every front-door call was audited: 7 APIs x (6 measured + 2 warm-up), 4 x 1 + 2 at c=4
    assert "audit records written: 62" in done.stdout


def litellm_or_skip() -> Path:
    sys.path.insert(0, str(ROOT))
    from bench.litellm_proxy import find_litellm

    binary = find_litellm()
    if binary is None:
        pytest.skip("LiteLLM is not installed (the bench extra); CI does not install it")
    return binary


def live_processes() -> dict[int, tuple[int, str]]:
    """``pid -> (process group, command line)`` of every process not yet a zombie."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
            cmd = (proc / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(proc.name)] = (int(fields[2]), cmd)
    return found


def processes_under(directory: Path) -> list[int]:
    """Pids whose command line names ``directory`` (the bench's scratch dir is inside it)."""
    return [pid for pid, (_, cmd) in live_processes().items() if str(directory) in cmd]


def group(pgid: int) -> list[str]:
    """Command lines of the live processes in ``pgid`` (the proxy and its workers)."""
    return [cmd for (group_id, cmd) in live_processes().values() if group_id == pgid]


@pytest.fixture
def short_tmp():
    """A scratch dir short enough for the sidecar's unix socket path (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bench-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_until(predicate, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)  # polling a condition, bounded by ``seconds``
    return predicate()


@pytest.mark.timeout(600)  # LiteLLM's proxy alone takes 10-60 s to start on a busy machine
def test_model_overhead_bench_litellm_column_is_measured_and_the_proxy_is_gone(short_tmp):
    """With LiteLLM installed (`pip install '.[bench]'`, or `.venv-bench`), its proxy serves
    every API against the same stand-ins, gets a figure per row, and is not left running."""
    binary = litellm_or_skip()
    done = run_model_bench("--litellm", str(binary), env={**os.environ, "TMPDIR": str(short_tmp)})
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert len(rows) == len(API_ROWS) + 1, done.stdout
    for api, _callers, _direct, _door, litellm in rows.values():
        assert re.fullmatch(r"[+-][\d.]+ / [+-][\d.]+", litellm), (api, litellm)
    assert wait_until(lambda: not processes_under(short_tmp)), processes_under(short_tmp)
    assert "LiteLLM proxy up at" in done.stderr


@pytest.mark.timeout(600)
def test_model_overhead_bench_killed_mid_run_leaves_no_litellm_proxy(short_tmp):
    """SIGKILL, where no ``finally`` runs: the kernel still stops the proxy (its orphan
    guard), so a cancelled bench never leaves a gateway serving on the machine."""
    binary = litellm_or_skip()
    bench = subprocess.Popen(
        [
            *(sys.executable, "bench/model_overhead.py", "--calls", "100000"),
            *("--concurrency", "0", "--only", "embeddings", "--litellm", str(binary)),
        ],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(short_tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in bench.stderr:  # bounded by the test's timeout
            if line.startswith("LiteLLM proxy up at"):
                proxy_pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
                break
        else:
            pytest.fail(f"the bench ended before its proxy started: {bench.wait()}")
        bench.kill()
        bench.wait(30)
        # The proxy leads its own process group (its session): it and its workers must go.
        assert wait_until(lambda: not group(proxy_pid)), group(proxy_pid)
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in processes_under(short_tmp):  # the killed bench's own sidecar
            os.kill(pid, signal.SIGKILL)
