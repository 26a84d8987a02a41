"""Issue 32, item 13: the first hour of a new user, against real `agent-sidecar` processes.

A second `serve` on a live socket is refused (the first keeps serving), a listener that cannot
be opened is exit 2 naming the setting (no traceback), refusals without a policy decision
still carry reasons, help shows no unavailable option and no empty default, a reader that
goes away ends the output quietly, and `--set` addresses names with dots.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import PolicyDenied, SidecarClient, StepUpRequired
from tests.support.cli import cli
from tests.support.running import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]
AGENT = "spiffe://demo.example/agent/support"
START_S = 90  # generous bound on a sidecar starting (2 cores shared with the xdist workers)


def write_config(
    tmp_path: Path, tools_url: str, name: str = "config.yaml", **sections: Any
) -> Path:
    """The demo config as a file: static identity, this test's paths, no fixed TCP ports."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["server"]["listen"] = [f"unix://{tmp_path}/agent.sock"]
    raw["identity"] = {"mode": "static", "spiffe_id": AGENT}
    raw["policy"]["dir"] = str(ROOT / "rego")
    out = tmp_path / (name.removesuffix(".yaml") + "-out")
    raw["audit"] = {"path": str(out / "audit.log")}
    raw["state"] = {"dir": str(out / "state")}
    raw["admin"] = {"listen": "127.0.0.1:0"}
    raw["approvals"]["listen"] = f"unix://{tmp_path}/{name}.approvals.sock"
    raw["approvals"]["groups"] = {"payments-oncall": ["local:alice"]}
    raw["frontdoor"], raw["mcp"], raw["mcp_servers"] = {}, {}, {}
    raw.pop("providers"), raw.pop("models")
    for target in raw["targets"].values():
        target["base_url"] = tools_url
        target.pop("auth", None)
    raw.update(sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def serve(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def serving(address: str, timeout_s: float = 2) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_serving(address: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_S
    while not serving(address):
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the sidecar did not serve in time"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit status and stderr of a `serve` expected to give up; killed if it serves on."""
    try:
        _, err = proc.communicate(timeout=START_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=60)
        raise AssertionError(f"it kept running instead of refusing to start: {err}") from None
    return proc.returncode, err


@pytest.fixture
def first(tmp_path: Path, tools) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A sidecar serving tmp_path/agent.sock."""
    proc = serve(write_config(tmp_path, tools.url))
    address = f"unix:{tmp_path}/agent.sock"
    try:
        wait_serving(address, proc)
        yield proc, address
    finally:
        stop(proc)


# --- a second serve on the same unix socket -------------------------------------------------


def test_item13_second_serve_on_a_live_socket_is_refused_and_the_first_keeps_serving(
    tmp_path, tools, first
):
    proc, address = first
    second = serve(write_config(tmp_path, tools.url, name="second.yaml"))
    code, err = finished(second)
    assert code == 2, err
    assert "server.listen" in err and f"{tmp_path}/agent.sock" in err, err
    assert "another agent-sidecar is serving on this socket" in err, err
    assert "Traceback" not in err, err
    assert (tmp_path / "agent.sock").is_socket()  # not deleted by the refused one
    assert serving(address) and proc.poll() is None
    with SidecarClient(address) as client:  # and still answers calls
        assert client.call_tool("tickets.get", {"id": "7"}).json()["id"] == "7"


def test_item13_a_second_serve_never_takes_over_the_approvals_socket(tmp_path, tools, first):
    """Its own agent socket, the first one's approvals socket: refused, naming the setting."""
    proc, _ = first
    shared = f"unix://{tmp_path}/config.yaml.approvals.sock"
    second = write_config(
        tmp_path, tools.url, name="second.yaml",
        server={"listen": [f"unix://{tmp_path}/second.sock"]},
        approvals={"listen": shared, "groups": {"payments-oncall": ["local:alice"]}},
    )  # fmt: skip
    code, err = finished(serve(second))
    assert code == 2 and "approvals.listen" in err and "Traceback" not in err, err
    listed = cli("approvals", "--admin", shared, "--as", "alice", "list")
    assert listed.returncode == 0, listed.stderr  # still the first sidecar's
    assert proc.poll() is None


def test_item13_two_serves_racing_for_one_socket_exactly_one_wins(tmp_path, tools):
    racers = [serve(write_config(tmp_path, tools.url, name=f"racer{i}.yaml")) for i in range(2)]
    address = f"unix:{tmp_path}/agent.sock"
    try:
        deadline = time.monotonic() + START_S
        while all(p.poll() is None for p in racers):  # the loser exits; the winner serves
            assert time.monotonic() < deadline, "neither racer gave up"
            time.sleep(0.1)
        [loser] = [p for p in racers if p.poll() is not None]
        [winner] = [p for p in racers if p is not loser]
        code, err = finished(loser)
        assert code == 2 and "server.listen" in err and "Traceback" not in err, err
        wait_serving(address, winner)
    finally:
        for proc in racers:
            stop(proc)


def test_item13_a_stale_socket_file_is_replaced(tmp_path, tools):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "agent.sock"))  # bound, never listening, then gone: stale
    stale.close()
    proc = serve(write_config(tmp_path, tools.url))
    try:
        wait_serving(f"unix:{tmp_path}/agent.sock", proc)
    finally:
        assert stop(proc) == 0


def test_item13_a_socket_another_program_listens_on_is_refused(tmp_path, tools):
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(tmp_path / "agent.sock"))
    other.listen()
    try:
        code, err = finished(serve(write_config(tmp_path, tools.url)))
        assert code == 2, err
        assert "server.listen" in err and "a live process accepts connections" in err, err
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(tmp_path / "agent.sock"))  # still the other program's
        probe.close()
    finally:
        other.close()


def test_item13_a_path_that_is_not_a_socket_is_refused_not_deleted(tmp_path, tools):
    (tmp_path / "agent.sock").write_text("my notes")
    code, err = finished(serve(write_config(tmp_path, tools.url)))
    assert code == 2 and "server.listen" in err and "is not a socket" in err, err
    assert (tmp_path / "agent.sock").read_text() == "my notes"


# --- address in use: exit 2, the setting named ---------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("setting", "section"),
    [
        ("admin.listen", lambda port: {"admin": {"listen": f"127.0.0.1:{port}"}}),
        ("server.listen", lambda port: {"server": {"listen": [f"127.0.0.1:{port}"]}}),
    ],
    ids=["metrics", "grpc"],
)
def test_item13_address_in_use_exits_2_naming_the_setting(
    tmp_path, tools, taken_port, setting, section
):
    config = write_config(tmp_path, tools.url, **section(taken_port))
    code, err = finished(serve(config))
    assert code == 2, err
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("agent-sidecar: error:")]
    assert str(config) in line and setting in line and f"127.0.0.1:{taken_port}" in line, line
    assert "in use" in line, line


def test_item13_a_listener_failing_at_start_exits_2_and_stops_the_others(tmp_path, tools):
    """The AuthZen listener opens after the agent API serves: the ones already serving are
    stopped again, and nothing is printed but the one error line."""
    config = write_config(
        tmp_path, tools.url, authzen={"listen": f"unix://{tmp_path}/missing/dir/../../x/a.sock"}
    )
    (tmp_path / "x").write_text("a file where a directory is needed")
    code, err = finished(serve(config))
    assert code == 2, err
    assert "authzen.listen: cannot listen on" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


# The default 127.0.0.1:9464 is also make run's (test_quickstart): they take turns
# (tests/conftest.py _host_resource_lock).
@pytest.mark.timeout(600)
@pytest.mark.host_resource("demo-host")
def test_item13_two_sidecars_on_the_default_metrics_port(tmp_path, tools):
    """The README's case: both keep the default admin.listen (127.0.0.1:9464)."""
    default_admin = {"admin": {}}
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9464)) == 0:
            pytest.skip("something else already serves 127.0.0.1:9464")
    one = serve(write_config(tmp_path, tools.url, name="one.yaml", **default_admin))
    try:
        wait_serving(f"unix:{tmp_path}/agent.sock", one)
        two = write_config(
            tmp_path, tools.url, name="two.yaml", server={"listen": [f"unix://{tmp_path}/b.sock"]},
            **default_admin,
        )  # fmt: skip
        code, err = finished(serve(two))
        assert code == 2 and "Traceback" not in err, err
        assert "admin.listen: cannot listen on 127.0.0.1:9464" in err, err
    finally:
        stop(one)


# --- reasons on refusals without a policy decision ----------------------------------------


def _approve(tmp_path: Path, approval_id: str) -> None:
    done = cli(
        "approvals", "--admin", f"unix://{tmp_path}/config.yaml.approvals.sock",
        "--as", "alice", "approve", approval_id, "--reason", "checked",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_item13_policy_denied_reasons_are_never_empty(tmp_path, first):
    _, address = first
    with SidecarClient(address, timeout_s=30) as client:
        task = client.start_task("refund", ttl_s=300)
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", {"amount": 500}, task_id=task.task_id, wait=False)
        approval_id = step_up.value.approval_id
        _approve(tmp_path, approval_id)

        with pytest.raises(PolicyDenied) as mismatch:  # another amount than approved
            client.call_tool(
                "payments.refund", {"amount": 900}, task_id=task.task_id, approval_id=approval_id
            )
        assert mismatch.value.code == "approval_mismatch"
        assert mismatch.value.reasons and all(mismatch.value.reasons), mismatch.value
        assert mismatch.value.decision.reasons  # on the wire, for any gRPC client

        client.call_tool(
            "payments.refund", {"amount": 500}, task_id=task.task_id, approval_id=approval_id
        )
        with pytest.raises(PolicyDenied) as used:
            client.call_tool(
                "payments.refund", {"amount": 500}, task_id=task.task_id, approval_id=approval_id
            )
        assert used.value.code == "approval_used"
        assert used.value.reasons and all(used.value.reasons), used.value
        assert used.value.decision.reasons

        client.end_task(task.task_id)
        with pytest.raises(PolicyDenied) as ended:
            client.call_tool("tickets.get", {"id": "7"}, task_id=task.task_id)
        assert ended.value.code == "task_ended"
        assert ended.value.reasons and all(ended.value.reasons), ended.value
        assert task.task_id in " ".join(ended.value.reasons)
        assert ended.value.decision.reasons


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [(), ("policy", "test"), ("approvals",), ("mcp",), ("serve",), ("console",)]
)
def test_item13_help_shows_no_unavailable_option_and_no_empty_default(command):
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(default: )" not in text
    assert "not available" not in text and "--coverage" not in text


def test_item13_coverage_typed_anyway_says_why():
    done = cli("policy", "test", "rego/", "--coverage")
    assert done.returncode == 2
    assert "opa test --coverage" in done.stderr


# --- a reader that goes away ----------------------------------------------------------------


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe whose reader is already gone (as `| head` ends up)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [("policy", "test", "rego/", "-v"), ("audit", "show", "AUDIT")],
    ids=["policy-test", "audit-show"],
)
def test_item13_output_into_a_closed_pipe_ends_quietly(tmp_path, tools, args):
    if "AUDIT" in args:  # a real audit log with a few calls in it
        proc = serve(write_config(tmp_path, tools.url))
        try:
            wait_serving(f"unix:{tmp_path}/agent.sock", proc)
            with SidecarClient(f"unix:{tmp_path}/agent.sock") as client:
                for i in range(5):
                    client.call_tool("tickets.get", {"id": str(i)})
        finally:
            stop(proc)
        args = tuple(str(tmp_path / "config-out/audit.log") if a == "AUDIT" else a for a in args)
    done = _into_closed_pipe(*args)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr


def test_item13_help_into_a_closed_pipe_ends_quietly():
    done = _into_closed_pipe("policy", "--help")
    assert done.returncode in (0, 141) and not done.stderr, done.stderr


def test_item13_output_piped_to_head_in_a_shell(tmp_path):
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f"{sys.executable} -m sidecar.cli policy test rego/ -v | head -1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.startswith("PASS: "), done.stdout
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr


# --- --set and names with dots --------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    ['tools."tickets.get".path=/kb/search', r"tools.tickets\.get.path=/kb/search"],
    ids=["quoted", "escaped"],
)
def test_item13_set_addresses_a_tool_whose_name_has_dots(tmp_path, tools, override):
    proc = serve(write_config(tmp_path, tools.url), "--set", override)
    try:
        wait_serving(f"unix:{tmp_path}/agent.sock", proc)
        with SidecarClient(f"unix:{tmp_path}/agent.sock") as client:
            client.call_tool("tickets.get", {"id": "7"})
    finally:
        stop(proc)
    assert [r.path for r in tools.received] == ["/kb/search"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('tools."tickets.get.path=/x', "a quote is not closed"),
        ("tools..path=/x", "a key segment is empty"),
        ("tools.tickets\\", "a backslash at the end"),
        ('tools."tickets.get".method=BREW', "tools.tickets.get.method"),
        ("server.listen.extra=1", "server.listen is not a mapping"),
        ("policy.timeout_ms=[", "not valid YAML"),
        ("x" * 5000, "expected KEY=VALUE"),
    ],
    ids=["open-quote", "empty-segment", "dangling-backslash", "bad-value", "not-a-mapping",
         "bad-yaml", "oversized-no-equals"],
)  # fmt: skip
def test_item13_a_malformed_set_is_exit_2_naming_it(tmp_path, tools, override, message):
    done = cli("serve", "--config", str(write_config(tmp_path, tools.url)), "--set", override)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
