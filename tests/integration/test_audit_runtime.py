"""No call is ever unaudited, and no record is torn or ambiguous: hostile strings, a dying
writer, a full disk and a timed-out upstream, each named after the finding it closes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from examples.demo.tools_server import Reply, ToolServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.client import Unavailable
from tests.conftest import all_audit_lines, audit_lines
from tests.integration.test_identity_pod import _health
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def _raw_call_tool(address: str, tool: str, arguments_json: str, **fields) -> grpc.RpcError:
    request = sidecar_pb2.CallToolRequest(tool=tool, arguments_json=arguments_json, **fields)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/agentsidecar.v1.Sidecar/CallTool")
        with pytest.raises(grpc.RpcError) as failed:
            call(request.SerializeToString(), timeout=10)
    return failed.value


def _poll(predicate, bound_s: float = 30.0) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["best_effort", "strict"])
@pytest.mark.parametrize(
    ("tool", "arguments_json"),
    [("tickets.get", '{"id": "\\ud800"}'), ("kb.search", '{"q": "a\\udfff"}')],
    ids=["path_segment", "argument"],
)
def test_item2_item3_a_lone_surrogate_is_invalid_arguments_and_audited(
    start_sidecar, tools, mode, tool, arguments_json
):
    running = start_sidecar(tools.url, audit={"mode": mode})
    error = _raw_call_tool(running.address, tool, arguments_json)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "surrogate" in error.details()
    with running.client() as client:  # the writer is alive: the next call is relayed, audited
        assert client.call_tool("tickets.get", {"id": "2"}).status == 200
    assert _poll(lambda: len(audit_lines(running.audit_path)) == 2)
    first, second = audit_lines(running.audit_path)
    assert first["outcome"]["code"] == "invalid_arguments"
    assert first["outcome"]["relayed"] is False
    assert second["outcome"]["code"] == "ok"
    assert [r.path for r in tools.received] == ["/tickets/2"]


class _Poison:
    """A value whose encoding kills the thread that encodes it (not an Exception)."""

    def __str__(self) -> str:
        raise SystemExit("poisoned")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_item2_a_stopped_writer_means_not_serving_and_nothing_relayed(start_sidecar, tools):
    from grpc_health.v1 import health_pb2

    running = start_sidecar(tools.url, audit={"mode": "best_effort"})
    assert _poll(lambda: _health(running.address) == health_pb2.HealthCheckResponse.SERVING)
    running.sidecar.audit.write({"type": "call", "value": _Poison()})
    assert _poll(lambda: not running.sidecar.audit.alive)
    assert _poll(lambda: _health(running.address) == health_pb2.HealthCheckResponse.NOT_SERVING)
    with running.client() as client, pytest.raises(Unavailable) as refused:
        client.call_tool("tickets.get", {"id": "1"})
    assert refused.value.code == "audit_unavailable"
    assert tools.received == []


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, time
    import sidecar
    from sidecar.audit import AuditError, AuditLog, FileKeySigner
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail, nothing dies
    path, key = sys.argv[1], sys.argv[2]
    log = AuditLog(path, signer=FileKeySigner(key), checkpoint_every=1000)
    for i in range(5):
        log.write({"type": "call", "time_ns": time.time_ns(), "n": i, "pad": "x" * 200})
    size = len(open(path, "rb").read())
    room = size + size // 5 * 3 // 2  # room for one more record and half of the next
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    failed = 0
    for i in range(5, 10):
        try:
            log.write({"type": "call", "time_ns": time.time_ns(), "n": i, "pad": "x" * 200})
        except AuditError:
            failed += 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    for i in range(10, 13):  # space is back
        log.write({"type": "call", "time_ns": time.time_ns(), "n": i, "pad": "x" * 200})
    log.close()
    print(failed)
    """
)


def test_item4_a_full_disk_leaves_no_torn_line_and_the_log_verifies(tmp_path):
    log, key = tmp_path / "audit.log", tmp_path / "signing.pem"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(log), str(key)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 4  # one record fit, four writes failed part-way or wholly
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is a whole record
    calls = [r for r in records if r["type"] == "call"]
    assert [r["n"] for r in calls] == [0, 1, 2, 3, 4, 5, 10, 11, 12]
    assert [r["seq"] for r in calls] == list(range(1, 10))
    verified = cli("audit", "verify", str(log), "--key", str(key.with_suffix(".pub")))
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.strip().endswith(": intact")


def test_item5_a_request_that_timed_out_after_sending_is_audited_as_relayed(start_sidecar):
    routes = {("GET", "/tickets/"): lambda r: Reply(body={}, delay_s=2)}
    with ToolServer(routes) as upstream:
        running = start_sidecar(
            upstream.url,
            tools={
                "tickets.get": {
                    "target": "tickets",
                    "operation": "read",
                    "method": "GET",
                    "path": "/tickets/{id}",
                    "timeout_s": 0.3,
                }
            },
        )
        with running.client() as client, pytest.raises(Unavailable) as failed:
            client.call_tool("tickets.get", {"id": "1"}, timeout_s=10)
        received = list(upstream.received)
    assert failed.value.code == "upstream_timeout"
    assert [r.path for r in received] == ["/tickets/1"]  # it did reach the upstream
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["relayed"] is True


def test_item5_a_refused_connection_is_audited_as_not_relayed(start_sidecar):
    from examples.demo.run import free_port

    running = start_sidecar(f"http://127.0.0.1:{free_port()}")
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "upstream_unavailable"
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["relayed"] is False
    assert all_audit_lines(running.audit_path)


def test_fsync_group_commit_shares_flushes_and_keeps_every_record(start_sidecar, tools):
    """audit.fsync: every call waits for its records to be on disk (group commit), and none
    is lost under concurrency."""
    from concurrent.futures import ThreadPoolExecutor

    running = start_sidecar(tools.url, audit={"fsync": True})

    def calls(_: int) -> int:
        with running.client(timeout_s=30) as client:
            for _ in range(10):
                client.call_tool("tickets.get", {"id": "7"})
        return 10

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(calls, range(16))) == 160
    counts = running.sidecar.audit.counts
    written = counts["written"]
    assert written >= 320  # an intent and a call record per relayed call
    # at most one flush per record; shared ones when records arrive during a flush (how many
    # depends on the disk: measured in the issue note, not asserted)
    assert 0 < counts["fsyncs"] <= written
    records = audit_lines(running.audit_path)
    assert len([r for r in records if r["rpc"] == "CallTool"]) == 160
    assert len(tools.received) == 160
    running.stop()
    assert running.sidecar.audit.counts["failed"] == 0
