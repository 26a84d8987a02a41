"""`make run` (examples/demo/serve.py) serves until stopped, and the README's snippets run
verbatim against it: a task, a read, a decide-only check, a step-up that a human approves
with the CLI command the snippet names, a model call through the front door, and MCP tools
through the MCP endpoint with the official client."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.shell import new_user_env

ROOT = Path(__file__).resolve().parents[2]
# make run writes ./demo-out and serves on fixed ports (8081, 8082, 7480, 7481, the default
# admin 127.0.0.1:9464) and /tmp/agent-sidecar: it takes turns with test_demo
# (tests/conftest.py _host_resource_lock); the timeout covers the wait for the turn.
pytestmark = [pytest.mark.host_resource("demo-host"), pytest.mark.timeout(600)]
APPROVALS = "unix:///tmp/agent-sidecar/approvals.sock"


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def approve_pending_until(done: threading.Event, approved: list[str]) -> None:
    """What the on-call human does, with the command the snippet's comment gives."""
    base = [sys.executable, "-m", "sidecar.cli", "approvals", "--admin", APPROVALS]
    base += ["--as", "demo-oncall", "--json"]
    while not done.is_set():
        listed = subprocess.run(
            [*base, "list", "--state", "pending"], capture_output=True, text=True, timeout=30
        )
        for approval in json.loads(listed.stdout or "[]"):
            subprocess.run(
                [*base, "approve", approval["id"], "--reason", "confirmed"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            approved.append(approval["id"])
        done.wait(0.2)


@pytest.fixture(scope="module")
def make_run() -> Iterator[list[str]]:
    """`make run` (examples/demo/serve.py) serving; its output lines so far."""
    serve = subprocess.Popen(
        [sys.executable, "examples/demo/serve.py"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in serve.stdout:
            lines.append(line)
            if "Try the README's snippets" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120), "".join(lines)
        yield lines
    finally:
        serve.send_signal(signal.SIGINT)
        code = serve.wait(timeout=60)
    assert code == 0, "".join(lines)
    deadline = time.monotonic() + 30  # everything it started has stopped
    while subprocess.run(["pgrep", "-f", "sidecar.cli serve --config " + str(ROOT)],
                         capture_output=True).returncode == 0:  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_item13_make_run_banner_commands_run_as_written_in_a_new_shell(make_run, tmp_path):
    """The banner's approvals command works pasted into a shell without the venv on PATH."""
    [line] = [line for line in make_run if line.strip().startswith("approvals ")]
    command = line.strip().removeprefix("approvals").strip()
    assert command.endswith(" list") and " approvals --admin unix://" in command, command
    done = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=new_user_env(tmp_path),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "command not found" not in done.stderr


def test_make_run_serves_the_readme_snippets_verbatim(make_run):
    tool_snippet, model_snippet, mcp_snippet = (
        s
        for s in readme_snippets()
        if "sidecar.client" in s or "OpenAI(" in s or "from mcp import" in s
    )
    done, approved = threading.Event(), []
    approver = threading.Thread(target=approve_pending_until, args=(done, approved))
    approver.start()
    try:
        run = subprocess.run(
            [sys.executable, "-c", tool_snippet],
            cwd="/tmp", capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        done.set()
        approver.join(60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ticket: {" in run.stdout
    assert "a refund of 500 would be: step_up" in run.stdout
    assert "refunded: {" in run.stdout, run.stdout
    assert "denied:" not in run.stdout and "needs a human" not in run.stdout
    assert approved
    model = subprocess.run(
        [sys.executable, "-c", model_snippet],
        cwd="/tmp", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert model.returncode == 0, model.stdout + model.stderr
    assert model.stdout.strip()
    mcp = subprocess.run(
        [sys.executable, "-c", mcp_snippet],
        cwd="/tmp", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert mcp.returncode == 0, mcp.stdout + mcp.stderr
    assert "tools: ['notes.search', 'notes.add']" in mcp.stdout, mcp.stdout
    assert "found: " in mcp.stdout and "printer" in mcp.stdout
