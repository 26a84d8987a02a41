"""``server.workers``: a supervisor, N worker processes on one TCP listener, shared state,
one audit segment per worker, restarts, and a health check that says when one is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples.demo.run import free_port, wait_serving
from sidecar.client import SidecarClient
from sidecar.config import ConfigError
from sidecar.workers import WorkerRole, WorkersStatus, available_cpus, segment_path, segments
from tests.support.fleet import poll
from tests.support.running import DEMO_CONFIG, RunningSidecar, sidecar_settings

ROOT = Path(__file__).resolve().parents[2]
REFUND = {"order": "A-1", "amount": 500}


@pytest.fixture
def workers_sidecar(tmp_path, tools):
    """``agent-sidecar serve`` with server.workers: 2 on a TCP listener."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    port = free_port()
    raw["server"] = {"listen": [f"127.0.0.1:{port}"], "workers": 2}
    raw["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    raw["policy"]["dir"] = str(ROOT / "rego")
    raw["audit"] = {"path": str(tmp_path / "audit.log"), "checkpoint_every": 5}
    raw["audit"]["signing_key"] = str(tmp_path / "audit-signing.key")
    raw["admin"] = {"listen": ""}
    raw["state"] = {"dir": str(tmp_path / "state")}
    raw["frontdoor"] = {}
    raw["mcp"], raw["mcp_servers"] = {}, {}
    raw["approvals"] = {
        "listen": f"unix://{tmp_path}/approvals.sock",
        "groups": {"payments-oncall": ["local:alice"]},
    }
    for target in raw["targets"].values():
        target["base_url"] = tools.url
        target.pop("auth", None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(tmp_path / "c.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, proc)
        # generous: two worker processes start on 2 cores shared with the other xdist workers
        poll(lambda: status(tmp_path).complete, timeout_s=90, what="both workers serving")
        yield proc, address, tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def status(tmp_path: Path) -> WorkersStatus:
    return WorkersStatus.read(tmp_path / "state") or WorkersStatus(expected=2)


def call_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r.get("type") == "call"]


def test_workers_share_the_listener_and_each_keeps_its_own_audit_segment(workers_sidecar, tools):
    proc, address, tmp_path = workers_sidecar
    first = status(tmp_path)
    assert first.expected == 2 and len(first.pids) == 2
    assert proc.pid not in first.pids  # the supervisor serves nothing itself

    def calls(_: int) -> int:
        with SidecarClient(address, timeout_s=20) as client:  # a connection of its own
            for _ in range(5):
                client.call_tool("tickets.get", {"id": "7"})
        return 5

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(calls, range(16))) == 80
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not (tmp_path / "state" / "workers.json").exists()
    found = segments(tmp_path / "audit.log")
    assert found == [tmp_path / "audit.log", tmp_path / "audit.worker1.log"]
    per_worker = [len(call_records(path)) for path in found]
    assert sum(per_worker) == 80 and len(tools.received) == 80
    assert all(per_worker), per_worker  # 16 connections: the kernel used both workers
    verify = [sys.executable, "-m", "sidecar.cli", "audit", "verify", str(found[0])]
    verify += ["--key", str(tmp_path / "audit-signing.pub"), "--require-sealed"]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit.log: " in done.stdout and "audit.worker1.log: " in done.stdout
    # Every segment is checked: a record edited in worker 1's is found.
    lines = found[1].read_text().splitlines()
    lines[0] = lines[0].replace('"tickets.get"', '"tickets.gone"')
    found[1].write_text("\n".join(lines) + "\n")
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "audit.worker1.log: BAD" in done.stdout and "audit.log: BAD" not in done.stdout


def test_a_dead_worker_is_restarted_and_calls_go_on(workers_sidecar):
    proc, address, tmp_path = workers_sidecar
    victim = status(tmp_path).pids[1]
    os.kill(victim, signal.SIGKILL)
    after = poll(
        lambda: (s := status(tmp_path)).restarts == 1 and s.complete and s,
        what="the worker restarted",
    )
    assert victim not in after.pids and len(after.pids) == 2
    assert f"(pid {victim}) exited with -9" in after.last_exit
    for _ in range(8):
        with SidecarClient(address, timeout_s=20) as client:
            assert client.call_tool("tickets.get", {"id": "7"}).status == 200
    assert proc.poll() is None


def test_an_approval_decided_by_worker_0_releases_calls_waiting_in_any_worker(
    workers_sidecar, tools
):
    """The approvals API is served by worker 0; its watchers are told of approvals created
    in any worker, and calls parked in worker 1 see the decision through the shared state."""
    import threading

    from sidecar.approvals.client import ApprovalsClient

    _, address, tmp_path = workers_sidecar
    clients = [SidecarClient(address, timeout_s=30) for _ in range(8)]
    seen: list[tuple[str, str]] = []
    watcher = ApprovalsClient(f"unix:{tmp_path}/approvals.sock", approver="alice")
    stream = watcher.watch()

    def watch() -> None:
        for event in stream:
            if event.type in ("pending", "created"):  # (pending: there when the watch began)
                seen.append((event.type, event.approval.id))
            if len({approval_id for _, approval_id in seen}) == 8:
                return

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        tasks = [c.start_task(f"refund {i}").task_id for i, c in enumerate(clients)]
        with ThreadPoolExecutor(8) as pool:
            parked = [
                pool.submit(c.call_tool, "payments.refund", REFUND | {"order": f"A-{i}"}, task_id=t)
                for i, (c, t) in enumerate(zip(clients, tasks, strict=True))
            ]
            with ApprovalsClient(f"unix:{tmp_path}/approvals.sock", approver="alice") as admin:
                pending = poll(
                    lambda: len(found := admin.list(["pending"])) == 8 and found,
                    what="8 pending approvals",
                )
                reader.join(30)  # the watcher was told of all 8, wherever they were created
                for approval in pending:
                    admin.approve(approval.id, reason="ok")
            results = [call.result(timeout=30) for call in parked]
    finally:
        for client in clients:
            client.close()
        watcher.close()
    assert {approval_id for _, approval_id in seen} == {a.id for a in pending}
    created = [approval_id for kind, approval_id in seen if kind == "created"]
    assert len(created) == len(set(created))  # each announced once
    assert all(r.status == 200 and r.decision.effect == "allow" for r in results)
    assert len([r for r in tools.received if r.path == "/refunds"]) == 8


def test_health_is_not_serving_while_a_worker_is_missing(tmp_path, tools):
    settings = sidecar_settings(
        tmp_path, tools.url, server={"listen": ["127.0.0.1:0"], "workers": 2}
    )
    state = settings.state.dir
    WorkersStatus(expected=2, alive=2).write(state)
    running = RunningSidecar(settings, WorkerRole(0, 2))
    try:
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving(expected: int) -> bool:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                return reply.status == expected

            poll(lambda: serving(health_pb2.HealthCheckResponse.SERVING), what="SERVING")
            WorkersStatus(expected=2, alive=1, restarts=1).write(state)
            poll(lambda: serving(health_pb2.HealthCheckResponse.NOT_SERVING), what="NOT_SERVING")
            WorkersStatus(expected=2, alive=2, restarts=1).write(state)
            poll(lambda: serving(health_pb2.HealthCheckResponse.SERVING), what="SERVING again")
    finally:
        running.stop()


def test_worker_count_and_what_cannot_be_shared(tmp_path, tools):
    unix_only = sidecar_settings(tmp_path, tools.url)
    assert unix_only.worker_count(8) == 1  # nothing a second process could serve
    tcp = sidecar_settings(tmp_path, tools.url, server={"listen": ["127.0.0.1:0"]})
    assert tcp.worker_count(8) == 1  # issue 26: one process unless configured
    auto = sidecar_settings(
        tmp_path, tools.url, server={"listen": ["127.0.0.1:0"], "workers": "auto"}
    )
    assert auto.worker_count(8) == 8 and auto.worker_count(1) == 1
    fixed = sidecar_settings(tmp_path, tools.url, server={"listen": ["127.0.0.1:0"], "workers": 3})
    assert fixed.worker_count(8) == 3
    with pytest.raises(ConfigError, match=r"server\.workers"):
        sidecar_settings(tmp_path, tools.url, server={"workers": 2})  # unix socket only
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert segment_path(Path("/a/audit.log"), 0) == Path("/a/audit.log")
    assert segment_path(Path("/a/audit.log"), 3) == Path("/a/audit.worker3.log")
    with pytest.raises(ValueError):
        WorkerRole(2, 2)


def test_a_config_that_cannot_start_stops_the_supervisor_with_its_code(tmp_path, tools):
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["server"] = {"listen": [f"127.0.0.1:{free_port()}"], "workers": 2}
    raw["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    raw["policy"]["dir"] = str(tmp_path / "no-such-policy")
    raw["state"] = {"dir": str(tmp_path / "state")}
    raw["audit"] = {"path": str(tmp_path / "audit.log")}
    raw["frontdoor"] = {}
    raw["mcp"], raw["mcp_servers"] = {}, {}
    raw["admin"] = {"listen": ""}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "no-such-policy" in done.stderr


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_workers_stop_when_their_supervisor_is_killed(workers_sidecar):
    """A supervisor killed with SIGKILL (no chance to stop them) leaves no worker behind
    holding the listener."""
    proc, _, tmp_path = workers_sidecar
    pids = status(tmp_path).pids
    assert all(_running(pid) for pid in pids)
    proc.kill()
    proc.wait(10)
    poll(lambda: not any(_running(pid) for pid in pids), what="the workers stopped")
