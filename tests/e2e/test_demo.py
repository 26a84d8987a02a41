"""`make demo` (examples/demo/run.py) runs end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Tests that share fixed things on the host take turns (tests/conftest.py _host_resource_lock):
# ./demo-out (make demo and make run both write it), /tmp/agent-sidecar/*.sock and make run's
# fixed ports (8081, 8082, 7480, 7481 and the default admin.listen 127.0.0.1:9464). The timeout
# covers the wait for the turn.
pytestmark = [pytest.mark.host_resource("demo-host"), pytest.mark.timeout(600)]


def test_the_demo_runs_end_to_end():
    done = subprocess.run(
        [sys.executable, "examples/demo/run.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "payments.refund  step_up" in out
    assert "partner.notify   deny" in out
    assert '"[REDACTED:email] asked for a call back"' in out
    assert "(19 call records, 1 approval record" in out
    assert "claude-small     allow" in out and "(Anthropic Messages API)" in out
    assert '"Draft a reply to [REDACTED:email] about her refund" (x-api-key: the sidecar' in out
    assert "mcp tools/list   allow" in out and "shows notes.add, notes.search" in out
    assert "notes.add        allow" in out and "notes.export_all deny" in out
    assert "gpt-small        deny" in out
    assert "(OpenAI Responses API, streamed)" in out
    assert '"If unsure, tell the customer to call [REDACTED:phone]"' in out
    assert '"Summarise: [REDACTED:email] says the printer is on fire"' in out
    assert "approved by local:demo-oncall" in out
    assert "approval_used" in out
    assert "task_ended" in out
    assert ": intact" in out  # the demo verifies its own audit log
    assert "tickets received a JWT-SVID the agent never saw" in out
    # The agent-to-agent exchange (examples/demo/a2a_demo.py): billing's tool call carries support.
    assert "billing  tool         kb.search       allow" in out
    assert "chain ['spiffe://demo.example/agent/support']" in out
    from tests.conftest import SECRET_PATTERNS

    for path in (ROOT / "demo-out").rglob("*"):  # logs, audit, the state database
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for kind, pattern in SECRET_PATTERNS.items():
            assert not pattern.search(text), f"{kind} written to {path}"
