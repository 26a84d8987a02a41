"""Issue 28 item 4: the series added for the shipped dashboard and alerts say what happened.

``agent_sidecar_audit_writer_up`` falls to 0 when the audit writer dies;
``agent_sidecar_policy_reload_failing`` rises while the newest revision on disk is rejected
and clears on the next good load, a revert to the active revision included;
``agent_sidecar_oldest_pending_approval_age_seconds`` is 0 with nothing waiting and the
oldest waiting approval's age otherwise; both approval gauges are left out of a scrape while
the state store cannot answer.
"""

from __future__ import annotations

import time

import pytest
import requests

from sidecar.client import StepUpRequired
from tests.integration.test_audit_runtime import _Poison
from tests.integration.test_policy_rollout import MARKED, _write
from tests.support.promql import exported

BROKEN = "package agentsidecar.authz\n\nimport rego.v1\n\ndecision := {"


def _scrape(running) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{running.sidecar.admin_port}/metrics", timeout=10).text
    assert exported(text).names  # parses as the exposition format
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _poll(predicate, bound_s: float = 30.0):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_item4_policy_reload_failing_rises_and_clears_even_on_a_revert(
    start_sidecar, tools, tmp_path
):
    policy_dir = tmp_path / "live"
    good = MARKED.format(marker="good")
    _write(policy_dir, good)
    running = start_sidecar(tools.url, policy={"dir": str(policy_dir), "reload_interval_ms": 0})
    reloader = running.sidecar.reloader
    before = _scrape(running)
    assert before["agent_sidecar_policy_reload_failing"] == 0
    assert before["agent_sidecar_policy_reload_failures_total"] == 0
    _write(policy_dir, BROKEN)
    assert reloader.reload_now() is False
    assert reloader.reload_now() is False  # polled again: still failing, counted once
    failing = _scrape(running)
    assert failing["agent_sidecar_policy_reload_failing"] == 1
    assert failing["agent_sidecar_policy_reload_failures_total"] == 1
    # Reverted to the revision still active: nothing to load, and no longer failing (the
    # gauge stayed at 1 forever before: only a *changed* revision cleared it).
    _write(policy_dir, good)
    assert reloader.reload_now() is False
    reverted = _scrape(running)
    assert reverted["agent_sidecar_policy_reload_failing"] == 0
    assert reverted["agent_sidecar_policy_reload_failures_total"] == 1
    # The same bad revision shipped again is a new failure, counted and logged again.
    _write(policy_dir, BROKEN)
    assert reloader.reload_now() is False
    assert _scrape(running)["agent_sidecar_policy_reload_failures_total"] == 2
    _write(policy_dir, MARKED.format(marker="fixed"))
    assert reloader.reload_now() is True
    fixed = _scrape(running)
    assert fixed["agent_sidecar_policy_reload_failing"] == 0
    assert fixed["agent_sidecar_policy_reloads_total"] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_item4_audit_writer_up_falls_when_the_writer_dies(start_sidecar, tools):
    running = start_sidecar(tools.url, audit={"mode": "best_effort"})
    assert _scrape(running)["agent_sidecar_audit_writer_up"] == 1
    running.sidecar.audit.write({"type": "call", "value": _Poison()})
    _poll(lambda: _scrape(running)["agent_sidecar_audit_writer_up"] == 0)
    assert not running.sidecar.audit.alive


def test_item4_oldest_pending_approval_age(start_sidecar, tools):
    running = start_sidecar(tools.url)
    assert _scrape(running)["agent_sidecar_oldest_pending_approval_age_seconds"] == 0
    with running.client() as client:
        task = client.start_task("refunds").task_id
        with pytest.raises(StepUpRequired):
            client.call_tool("payments.refund", {"amount": 500}, task_id=task, wait=False)
    first = _scrape(running)
    assert first["agent_sidecar_pending_approvals"] == 1
    # the age grows with the clock (polled, never slept on)
    age = first["agent_sidecar_oldest_pending_approval_age_seconds"]
    assert age >= 0
    _poll(lambda: _scrape(running)["agent_sidecar_oldest_pending_approval_age_seconds"] > age)


def test_item4_approval_gauges_are_left_out_while_the_store_is_down(
    start_sidecar, tools, pg_server, pg_state, tmp_path
):
    """A real PostgreSQL outage: neither approval gauge is reported (a 0 would read as "no
    approval waiting"); the rest of the scrape is still served; both return with the store."""
    running = start_sidecar(tools.url, state={"dir": str(tmp_path / "state"), **pg_state})
    with running.client() as client:
        task = client.start_task("refunds").task_id
        with pytest.raises(StepUpRequired):
            client.call_tool("payments.refund", {"amount": 500}, task_id=task, wait=False)
    assert _scrape(running)["agent_sidecar_pending_approvals"] == 1
    pg_server.stop()
    try:
        scraped = _scrape(running)
        assert "agent_sidecar_oldest_pending_approval_age_seconds" not in scraped
        assert "agent_sidecar_pending_approvals" not in scraped
        assert scraped["agent_sidecar_audit_writer_up"] == 1
    finally:
        pg_server.start()
    back = _poll(lambda: (s := _scrape(running)).get("agent_sidecar_pending_approvals") == 1 and s)
    assert back["agent_sidecar_oldest_pending_approval_age_seconds"] > 0
