"""Rolling out policy: hot reload swaps atomically under load, a broken revision is rejected
and the old one stays, and a shadow policy is recorded beside every decision but never
enforced."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from sidecar.client import PolicyDenied
from sidecar.policy import EmbeddedEngine
from sidecar.policy.reload import PolicyReloader
from sidecar.policy.settings import PolicySettings
from sidecar.policy.source import load_policy_dir
from tests.conftest import REGO, audit_lines
from tests.support.settle import poll

MARKED = """package agentsidecar.authz

import rego.v1

decision := {{"effect": "allow", "reasons": ["{marker}"]}}
"""


def _write(policy_dir: Path, text: str) -> None:
    target = policy_dir / "agentsidecar" / "authz" / "authz.rego"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(target)  # an atomic rename, as a config-map update or `mv` would be


def test_concurrent_calls_during_repeated_swaps(start_sidecar, tools, tmp_path):
    policy_dir = tmp_path / "live"
    _write(policy_dir, MARKED.format(marker="A"))
    revision_a = load_policy_dir(policy_dir).revision
    _write(policy_dir, MARKED.format(marker="B"))
    revision_b = load_policy_dir(policy_dir).revision
    marker_of = {revision_a: "A", revision_b: "B"}
    # A generous policy timeout: this is about swaps, and a 2-core machine compiling a policy
    # while four callers decide must not turn into policy_timeout (that has its own tests).
    running = start_sidecar(
        tools.url,
        policy={"dir": str(policy_dir), "reload_interval_ms": 0, "timeout_ms": 10_000},
    )
    reloader = running.sidecar.reloader
    failures: list[BaseException] = []
    stop = threading.Event()
    done = [0]
    progress = threading.Condition()

    def caller() -> None:
        with running.client() as client:
            while not stop.is_set():
                try:
                    client.check("tickets.get", {"id": "1"}, timeout_s=30)
                except BaseException as exc:  # every failure counts
                    failures.append(exc)
                with progress:
                    done[0] += 1
                    progress.notify_all()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    swaps = 0
    for i in range(20):
        _write(policy_dir, MARKED.format(marker="A" if i % 2 == 0 else "B"))
        swaps += reloader.reload_now()
        with progress:  # calls decided under this revision before the next swap
            target = done[0] + 4
            assert progress.wait_for(lambda t=target: done[0] >= t, timeout=60)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert swaps == 20
    records = audit_lines(running.audit_path)
    assert len(records) > 40
    seen = set()
    for record in records:
        revision = record["policy"]["revision"]
        assert record["decision"]["reasons"] == [marker_of[revision]], record["decision_id"]
        seen.add(revision)
    assert seen == {revision_a, revision_b}


def test_a_broken_revision_is_rejected_and_the_old_one_stays(start_sidecar, tools, tmp_path):
    policy_dir = tmp_path / "live"
    _write(policy_dir, MARKED.format(marker="good"))
    good = load_policy_dir(policy_dir).revision
    running = start_sidecar(tools.url, policy={"dir": str(policy_dir), "reload_interval_ms": 50})
    reloader = running.sidecar.reloader
    for broken in (
        "package agentsidecar.authz\n\nimport rego.v1\n\ndecision := {",  # syntax
        'package agentsidecar.authz\n\nimport rego.v1\n\ndecision := http.send({"url": "x"})\n',
    ):
        rejected = reloader.rejections
        _write(policy_dir, broken)
        poll(lambda n=rejected: reloader.rejections != n, what="the revision rejected")
        assert reloader.rejections == rejected + 1
        with running.client() as client:
            decision = client.check("tickets.get", {"id": "1"})
        assert decision.reasons == ("good",)
        assert decision.policy_revision == good
    _write(policy_dir, MARKED.format(marker="fixed"))
    poll(lambda: running.sidecar.engine.revision != good, what="the fixed revision loaded")
    with running.client() as client:
        assert client.check("tickets.get", {"id": "1"}).reasons == ("fixed",)


def test_the_shadow_policy_is_recorded_and_never_enforced(start_sidecar, tools, tmp_path):
    shadow = tmp_path / "shadow"
    shutil.copytree(REGO, shadow)
    authz = shadow / "agentsidecar" / "authz" / "authz.rego"
    authz.write_text(  # the candidate denies every read
        authz.read_text()
        + '\n_deny contains "candidate: reads are frozen" if input.action.operation == "read"\n'
    )
    running = start_sidecar(tools.url, policy={"shadow": str(shadow)})
    with running.client() as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200  # enforced: active
        with pytest.raises(PolicyDenied):
            client.call_tool("tickets.close", {"id": "1"})
    allowed, denied = audit_lines(running.audit_path)
    assert allowed["decision"]["effect"] == "allow"
    assert allowed["shadow"]["effect"] == "deny"
    assert allowed["shadow"]["reasons"] == ["candidate: reads are frozen"]
    assert allowed["shadow"]["revision"] == load_policy_dir(shadow).revision
    assert denied["shadow"]["effect"] == "deny"
    assert len(tools.received) == 1
    stats = running.sidecar.calls.path.stats
    assert (stats["shadow_evaluations"], stats["shadow_disagreements"]) == (2, 1)


def test_sighup_reloads_a_running_sidecar(tmp_path):
    import signal

    from sidecar.client import SidecarClient
    from tests.support.running import serve_process

    policy_dir = tmp_path / "live"
    _write(policy_dir, MARKED.format(marker="before"))
    config = {
        "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"},
        "policy": {"dir": str(policy_dir), "reload_interval_ms": 0},
        "targets": {"t": {"base_url": "http://127.0.0.1:9"}},
        "tools": {"t.get": {"target": "t", "operation": "read", "method": "GET", "path": "/"}},
    }
    # The barrier for "it never polls" (session 12, item 3; it was a fixed 0.3 s sleep, shorter
    # than the 1 s default interval, so it could not fail): the same reloader at the default
    # interval, watching the same directory in this process, picks up two changes one after
    # the other. Its second pickup comes at least one full default interval after the first
    # change was written, so a sidecar polling at that interval (or faster) would have
    # reloaded by then.
    default_interval_s = PolicySettings().reload_interval_ms / 1000
    watched = EmbeddedEngine.from_dir(policy_dir, "data.agentsidecar.authz.decision")
    control = PolicyReloader(watched, default_interval_s)
    with serve_process(tmp_path, config) as (proc, address), SidecarClient(address) as client:
        assert client.check("t.get").reasons == ("before",)
        control.start()
        try:
            for n, marker in enumerate(("after", "later"), start=1):
                _write(policy_dir, MARKED.format(marker=marker))
                poll(lambda n=n: control.reloads == n, what=f"the control's reload {n}")
        finally:
            control.stop()
            watched.close()
        assert client.check("t.get").reasons == ("before",)  # no polling: reload_interval 0
        proc.send_signal(signal.SIGHUP)
        poll(lambda: client.check("t.get").reasons == ("later",), what="the SIGHUP reload")
