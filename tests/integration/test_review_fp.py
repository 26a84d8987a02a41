"""Review of issue 26 item 1 (footprint): the findings, each with its regression test.

Real processes throughout (a process tree mapping a real file, the real supervisor running
real child processes); no duration is asserted and nothing waits on a sleep."""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.footprint import footprint, parse_smaps, process_tree
from sidecar import supervisor as supervisor_module
from sidecar.calls.observe import WORKERS_WARNING, build_observers
from sidecar.config import load_settings
from sidecar.supervisor import SUPERVISE_ENV, WORKER_ENV, Supervisor, parse_spec
from sidecar.workers import (
    CAPPED_WARNING,
    ZERO_WORKERS_WARNING,
    _cgroup_quota,
    available_cpus,
    planned_workers,
)
from tests.integration.test_issue26_footprint import minimal_config, write_cgroup
from tests.support.fleet import poll

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# --- 1: the pod-alone figure ------------------------------------------------------------

# Maps a file and reads every page, then (depth > 0) starts a child that does the same.
MAPPER = """
import mmap, subprocess, sys
depth, path = int(sys.argv[1]), sys.argv[2]
with open(path, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
touched = sum(m[i] for i in range(0, len(m), 4096))
if depth:
    subprocess.Popen([sys.executable, "-c", sys.argv[3], str(depth - 1), path, sys.argv[3]])
print("up", flush=True)
sys.stdin.read()
"""


def test_review_fp_1_pod_alone_counts_a_file_shared_outside_the_tree_in_full(tmp_path):
    """An 8 MiB file mapped by two processes of the tree and by this test (outside it): the
    host PSS charges the tree 2/3 of it, the pod-alone figure the whole file, once."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(8 * MIB))
    with blob.open("rb") as f:
        outside = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert sum(outside[i] for i in range(0, len(outside), 4096)) >= 0  # every page mapped
    root = subprocess.Popen(
        [sys.executable, "-c", MAPPER, "1", str(blob), MAPPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert root.stdout is not None
        assert [root.stdout.readline(), root.stdout.readline()] == [b"up\n", b"up\n"]
        pids = poll(lambda: len(p := process_tree(root.pid)) == 2 and p, what="two processes")
        tree = footprint(root.pid)
        assert [p.pid for p in tree.processes] == pids
        assert tree.file_mb("blob.bin") == pytest.approx(8.0, abs=0.01)  # once, in full
        blob_pss = sum(
            m.pss_kib for p in tree.processes for m in p.mappings if m.path.endswith("blob.bin")
        )
        assert blob_pss / 1024 == pytest.approx(8.0 * 2 / 3, abs=0.05)  # what host PSS says
        # Every python file page the test process maps too is charged to the tree in full.
        assert tree.uss_mb <= tree.pss_mb < tree.pod_mb <= tree.rss_mb
        assert "pod alone" in tree.summary() and "host PSS" in tree.summary()
    finally:
        outside.close()
        for pid in reversed(process_tree(root.pid)):
            subprocess.run(["kill", str(pid)], check=False)
        root.wait(30)


def test_review_fp_1_a_single_process_alone_holds_its_rss():
    """One process, nothing shared inside its tree: the pod-alone figure is its anonymous PSS
    plus every file page it maps, which is its RSS (no shared anonymous memory)."""
    proc = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        poll(lambda: footprint(proc.pid).processes, what="the process mapped")
        tree = footprint(proc.pid)
        assert tree.pod_mb == pytest.approx(tree.rss_mb, abs=0.1)
        assert tree.pss_mb < tree.pod_mb  # libpython & co are shared with this test process
    finally:
        proc.kill()
        proc.wait(30)


SMAPS = """\
55fba9144000-55fba9147000 r--p 00000000 fe:00 260850                     /usr/bin/sed
Rss:                  12 kB
Pss:                   6 kB
Shared_Clean:          8 kB
Shared_Dirty:          0 kB
Private_Clean:         4 kB
Private_Dirty:         0 kB
VmFlags: rd mr mw me
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
Pss:                  20 kB
Private_Dirty:        20 kB
not a header at all
Rss: lots kB
7ffe1000-7ffe2000 rw-p 00000000 00:00 0
Rss:
Pss:                   3 kB
"""


def test_review_fp_1_smaps_parsing_is_per_mapping_and_survives_garbage():
    sed, stack, anon = parse_smaps(SMAPS)
    assert sed.file == ("fe:00", 260850) and sed.path == "/usr/bin/sed"
    assert (sed.rss_kib, sed.pss_kib, sed.private_kib, sed.shared_kib) == (12, 6, 4, 8)
    assert stack.file is None and stack.private_kib == 20
    assert stack.rss_kib == 0  # "Rss: lots kB" is malformed: 0, not a crash
    assert anon.file is None and (anon.rss_kib, anon.pss_kib) == (0, 3)
    assert parse_smaps("") == ()
    assert parse_smaps("Rss: 12 kB\n") == ()  # fields before any header: dropped


# --- 2 and 10: what `serve` plans, and what it says -------------------------------------


def tcp_settings(tmp_path: Path, tools_url: str, workers: object, **sections: object):
    server: dict[str, object] = {"listen": ["127.0.0.1:7000"]}
    if workers is not None:
        server["workers"] = workers
    return load_settings(minimal_config(tmp_path, tools_url, server=server, **sections))


def test_review_fp_2_auto_on_96_cpus_is_capped_at_64_and_says_so(
    tmp_path, tools, caplog, monkeypatch
):
    monkeypatch.delenv(WORKER_ENV, raising=False)
    settings = tcp_settings(tmp_path, tools.url, "auto")
    assert settings.worker_count(96) == 64
    with caplog.at_level(logging.WARNING, logger="sidecar.workers"):
        count = planned_workers(settings, 96)
    assert count == 64
    assert CAPPED_WARNING % (96, 64) in caplog.text
    spec = json.dumps({"count": count, "state_dir": str(tmp_path), "grace_s": 1})
    assert parse_spec([spec, "true"])[0]["count"] == 64  # the supervisor accepts it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sidecar.workers"):
        assert planned_workers(settings, 64) == 64
        assert planned_workers(settings, 8) == 8
        monkeypatch.setenv(WORKER_ENV, "3/64")  # a worker does not say it again
        assert planned_workers(settings, 96) == 64
    assert "capped" not in caplog.text


def test_review_fp_10_zero_workers_warns_pointing_to_auto(tmp_path, tools, caplog, monkeypatch):
    monkeypatch.delenv(WORKER_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="sidecar.workers"):
        assert planned_workers(tcp_settings(tmp_path, tools.url, 0), 8) == 1
    assert ZERO_WORKERS_WARNING in caplog.text and "auto" in ZERO_WORKERS_WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sidecar.workers"):
        for value in (None, 1, 2, "auto"):
            planned_workers(tcp_settings(tmp_path, tools.url, value), 8)
    assert "server.workers: 0" not in caplog.text


# --- 3: the supervisor's bypass of the engine preload -------------------------------------

PRELOADED = "import sys, sidecar; print('sidecar._loadorder' in sys.modules)"


@pytest.mark.parametrize("value", ["1", "", "0", "yes", "-1", "not a pid", "PARENT"])
def test_review_fp_3_a_supervise_value_from_the_env_skips_nothing(value):
    """A pod env (or anything but the supervisor's own pid) cannot turn the preload off."""
    value = str(os.getpid()) if value == "PARENT" else value
    done = subprocess.run(
        [sys.executable, "-c", PRELOADED],
        cwd=ROOT,
        env={**os.environ, SUPERVISE_ENV: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["True"], done.stderr


def test_review_fp_3_only_the_supervisors_own_pid_skips_the_preload():
    """``exec`` keeps the pid: a shell that sets its own pid and execs is what
    ``exec_supervisor`` does."""
    script = f'{SUPERVISE_ENV}=$$ exec "$0" -c "$1"'
    done = subprocess.run(
        ["sh", "-c", script, sys.executable, PRELOADED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["False"], done.stderr


# --- 5: the restart backoff doubles -------------------------------------------------------

# Worker 0 serves until stopped; worker 1 serves once, then exits, and fails every restart.
FAKE_WORKER = """
case "$AGENT_SIDECAR_WORKER" in
0/*) printf 1 >&"$AGENT_SIDECAR_READY_FD"; exec sleep 600 ;;
*) if [ ! -e "$FP_DIR/served" ]; then : > "$FP_DIR/served"; printf 1 >&"$AGENT_SIDECAR_READY_FD"; fi
   exit 3 ;;
esac
"""
SCALE = 5.0  # the supervisor's clock runs 5x: a 0.5 s backoff takes 0.1 s


def test_review_fp_5_a_failing_restart_doubles_the_backoff(tmp_path, monkeypatch):
    monkeypatch.setenv("FP_DIR", str(tmp_path))
    # Every exit counts as young however loaded the machine (the sequence under test is the
    # doubling; a worker that ran 10 s is restarted at once, unchanged).
    monkeypatch.setattr(supervisor_module, "YOUNG_S", float("inf"))

    def fast_clock() -> float:
        return time.monotonic() * SCALE

    supervisor = Supervisor(
        ["bash", "-c", FAKE_WORKER], 2, tmp_path / "state", 1.0, clock=fast_clock
    )

    def restarts_of_1() -> list[float]:
        return [delay for index, delay in supervisor.scheduled if index == 1]

    def stop_after_five() -> None:
        try:
            poll(lambda: len(restarts_of_1()) >= 5, timeout_s=120, what="five restarts")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler: a clean stop

    watcher = threading.Thread(target=stop_after_five)
    watcher.start()
    try:
        assert supervisor.run() == 0
    finally:
        watcher.join(150)
    assert restarts_of_1()[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    # once per exit (worker 0 never exited): scheduling again after a failed start, as well
    # as on its exit event, is what quadrupled it
    assert len(supervisor.scheduled) == supervisor.status.restarts


# --- 6: the cgroup test can fail ---------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "quota", "cpus"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "250000 100000\n"}, 2.5, 3),
        ({"cpu.max": "100000 100000\n"}, 1.0, 1),
        ({"cpu.max": "50000 100000\n"}, 0.5, 1),  # half a CPU: still one process
        ({"cpu.max": "1600000 100000\n"}, 16.0, 8),  # above the affinity: the affinity
        ({"cpu.max": "max 100000\n"}, None, 8),  # no limit: the affinity
        ({"cpu.max": "0 100000\n"}, None, 8),  # nonsense: ignored
        ({"cpu.max": "100000 0\n"}, None, 8),
        ({"cpu.max": "garbage\n"}, None, 8),
        ({"cpu.max": ""}, None, 8),
        ({"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}, 2.5, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, 8),
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "0"}, None, 8),
        ({}, None, 8),  # no cgroup files at all
    ],
)
def test_review_fp_6_workers_auto_reads_the_cgroup_limit_on_8_cpus(
    tmp_path, monkeypatch, files, quota, cpus
):
    """Pretending 8 CPUs of affinity, every limit below 8 shows (on the 2-CPU test machine a
    limit of 2 or more could not be told from none)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    root = write_cgroup(tmp_path, files)
    assert _cgroup_quota(root) == quota
    assert available_cpus(root) == cpus


# --- 8: the metrics warning counts the workers that run ----------------------------------


class _Path:
    metrics = None


def test_review_fp_8_the_metrics_warning_uses_the_real_worker_count(tmp_path, tools, caplog):
    """``workers: auto`` with a 1-CPU limit runs one process, whatever os.cpu_count() says:
    the count is the role's (what serve started), not a recount of the host's CPUs."""
    settings = tcp_settings(tmp_path, tools.url, "auto", admin={"listen": "127.0.0.1:0"})
    with caplog.at_level(logging.WARNING, logger="sidecar.calls.observe"):
        build_observers(settings, _Path(), 1).close()  # type: ignore[arg-type]
    assert "worker 0's series only" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="sidecar.calls.observe"):
        build_observers(settings, _Path(), 3).close()  # type: ignore[arg-type]
    assert WORKERS_WARNING % (3, 3) in caplog.text


# --- 9: the supervisor's logger ----------------------------------------------------------


def test_review_fp_9_the_supervisor_logs_as_sidecar_supervisor(tmp_path):
    """Run as ``python -m sidecar.supervisor``, its records are named sidecar.supervisor,
    not ``__main__``."""
    spec = json.dumps({"count": 2, "state_dir": str(tmp_path / "state"), "grace_s": 1})
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.supervisor", spec, "false"],  # worker 0 cannot start
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    critical = [r for r in records if r.get("msg") == "worker 0 could not start"]
    assert critical and {r["logger"] for r in records} == {"sidecar.supervisor"}
