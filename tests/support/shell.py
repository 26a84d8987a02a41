"""A new user's shell: no virtualenv active and nothing of it on PATH, as after a fresh login."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def new_user_env(home: Path) -> dict[str, str]:
    """A fresh login's environment: no venv active, nothing of it on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN
    )
    env["HOME"] = str(home)
    return env


def shell(script: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` in one bash, as typed; everything it left running is stopped afterwards."""
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the session this test started, only
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
