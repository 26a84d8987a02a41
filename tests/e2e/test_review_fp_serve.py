"""Review of issue 26 item 1 (footprint), through ``agent-sidecar serve`` itself: a stop
during start-up (finding 4) and a pod env that sets ``AGENT_SIDECAR_SUPERVISE`` (finding 3).

A worker's start is held at a gate: a ``sitecustomize`` on PYTHONPATH that, in the worker
named by ``FP_GATE_WORKER``, opens a FIFO no one writes (it blocks there, as a worker waiting
on its SVID would). No duration is asserted and nothing sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from examples.demo.run import free_port, wait_serving
from sidecar.supervisor import SUPERVISE_ENV
from sidecar.workers import segment_path
from tests.integration.test_issue26_footprint import START_S, minimal_config
from tests.support.fleet import poll

ROOT = Path(__file__).resolve().parents[2]

GATE = """
import os
_worker = os.environ.get("AGENT_SIDECAR_WORKER", "")
# a worker, not a process a worker started (they inherit the variable)
if _worker and str(os.getppid()) == os.environ.get("AGENT_SIDECAR_SUPERVISOR"):
    with open(os.environ["FP_STARTS"], "a") as _log:
        _log.write(_worker + "\\n")
    if _worker.split("/")[0] == os.environ.get("FP_GATE_WORKER"):
        open(os.environ["FP_GATE"] + ".reached", "w").close()
        open(os.environ["FP_GATE"]).read()  # a FIFO no one writes: held until killed
"""


def serve(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Whatever a failed test left: the supervisor's workers, then the supervisor."""
    from bench.footprint import process_tree

    for pid in reversed(process_tree(proc.pid)):
        subprocess.run(["kill", "-9", str(pid)], check=False)
    proc.wait(60)


def audit_verify(log: Path) -> subprocess.CompletedProcess[str]:
    key = log.parent / "audit-signing.pub"
    verify = [sys.executable, "-m", "sidecar.cli", "audit", "verify"]
    return subprocess.run(
        [*verify, str(log), "--require-sealed", "--key", str(key)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("gated", "count"), [(0, 2), (1, 3)])
def test_review_fp_4_sigterm_during_start_up_starts_no_further_worker(
    tmp_path, tools, gated, count
):
    """SIGTERM while worker ``gated`` is starting: the supervisor stops at once (its wait for
    the worker's ready byte is woken by the signal), starts no worker after it, stops the
    ones it has, and the audit segments of those that served are sealed."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(GATE)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    starts = tmp_path / "starts"
    config = minimal_config(
        tmp_path, tools.url, server={"listen": [f"127.0.0.1:{free_port()}"], "workers": count}
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
        "FP_GATE": str(gate),
        "FP_GATE_WORKER": str(gated),
        "FP_STARTS": str(starts),
    }
    proc = serve(config, tmp_path / "serve.log", env)
    try:
        poll(lambda: Path(f"{gate}.reached").exists(), timeout_s=START_S, what="the gate")
        proc.send_signal(signal.SIGTERM)
        # Bounded, not timed: the old supervisor stayed in its wait for START_TIMEOUT_S
        # (120 s) and then started the next worker.
        assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    started = starts.read_text().split()
    assert started == [f"{i}/{count}" for i in range(gated + 1)]  # none after the gated one
    audit = Path(yaml.safe_load(config.read_text())["audit"]["path"])
    for index in range(gated):  # every worker that served sealed its segment on the stop
        done = audit_verify(segment_path(audit, index))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "intact" in done.stdout
    assert not segment_path(audit, gated + 1).exists()


def test_review_fp_3_supervise_set_in_the_pod_env_still_serves(tmp_path, tools):
    """``AGENT_SIDECAR_SUPERVISE=1`` in a pod's env: the old code skipped the engine preload
    in ``serve`` itself and refused to start (exit 2, a load-order error that did not name
    the variable). Now only the supervisor's own pid skips it."""
    port = free_port()
    config = minimal_config(tmp_path, tools.url, server={"listen": [f"127.0.0.1:{port}"]})
    env = {**os.environ, SUPERVISE_ENV: "1"}
    proc = serve(config, tmp_path / "serve.log", env)
    try:
        wait_serving(f"127.0.0.1:{port}", proc, timeout_s=START_S)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "librego_shared.so" in maps
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
