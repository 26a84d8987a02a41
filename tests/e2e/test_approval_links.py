"""Issue 29 item 2: every announcement of a pending approval carries its console page.

Real parts throughout: a sidecar over real gRPC (unix socket), a real webhook receiver (an
HTTP server in the test) for the generic and the Slack payloads, the real CLI as its own
process on the real admin socket (``list``, ``show``, ``watch``). The console's side (a deep
link opened signed out lands on that approval after sign-in; a crafted ``next`` never leaves
the console, under a path prefix too) is in ``tests/e2e/test_console_links.py`` (Playwright on
Chromium).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sidecar.client import StepUpRequired
from tests.support.cli import cli as run_cli

REFUND = {"order": "SECRET-ORDER-7", "amount": 500}
BASE = "https://approvals.example.com/console"


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: keeps each JSON body it is sent (a chat tool's incoming webhook)."""

    bodies: list[dict] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(
            {"content_type": self.headers["Content-Type"], "body": json.loads(raw)}
        )
        type(self).arrived.set()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.bodies, _Receiver.arrived = [], threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _delivered(count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 15
    while len(_Receiver.bodies) < count and time.monotonic() < deadline:
        _Receiver.arrived.wait(0.5)
        _Receiver.arrived.clear()
    assert len(_Receiver.bodies) >= count, "the notification never arrived"
    return _Receiver.bodies


def _step_up(client, task: str, **kwargs) -> StepUpRequired:
    with pytest.raises(StepUpRequired) as step_up:
        client.call_tool("payments.refund", REFUND, task_id=task, **kwargs)
    return step_up.value


def _cli(running, *args: str):
    return run_cli("approvals", "--admin", running.approvals_address, "--as", "alice", *args)


@pytest.mark.parametrize("notify_format", ["generic", "slack"])
def test_item2_every_announcement_of_a_pending_approval_links_its_console_page(
    start_sidecar, tools, receiver, notify_format
):
    running = start_sidecar(
        tools.url,
        approvals={
            "console_url": BASE + "/",
            "notify_url": f"http://127.0.0.1:{receiver.server_port}/hooks/T000/B000/x",
            "notify_format": notify_format,
        },
    )
    with running.client() as client:
        task = client.start_task("refund A-1").task_id
        pending = _step_up(client, task, wait=False)
    approval_id = pending.approval_id
    url = f"{BASE}/approvals/{approval_id}"
    # gRPC: the StepUpRequired details carry it, and so does the message whoever prints it.
    assert pending.approval_url == url
    assert pending.decision.approval_url == url
    assert f"(approve at {url})" in str(pending)

    # The webhook: the generic body names it; the Slack message has a button to it.
    [delivery] = _delivered()
    assert delivery["content_type"] == "application/json"
    body = delivery["body"]
    if notify_format == "generic":
        assert body["type"] == "approval.pending"
        assert body["approval_url"] == url
        assert body["approval"]["id"] == approval_id
    else:
        assert set(body) == {"text", "blocks"}
        assert body["text"].endswith(f"<{url}|Open approval>")
        buttons = [e for b in body["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert [b["url"] for b in buttons] == [url]
        # Only what the generic body shows, and of the arguments their names alone.
        assert "SECRET-ORDER-7" not in json.dumps(body)
        assert "Arguments: amount, order" in json.dumps(body)

    # The CLI: list and show print it.
    listed = _cli(running, "list", "--state", "pending")
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if approval_id in x]
    assert line.endswith(f"  {url}")
    shown = _cli(running, "show", approval_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["url"] == url
    as_json = _cli(running, "--json", "list")
    assert as_json.returncode == 0, as_json.stderr
    assert [a["url"] for a in json.loads(as_json.stdout) if a["id"] == approval_id] == [url]


def test_item2_a_waiting_call_and_a_retry_that_find_it_pending_carry_the_link(start_sidecar, tools):
    """Every way a step-up ends pending names the page: the deadline came first, or the
    retry with the id still finds it pending (waiting or not)."""
    running = start_sidecar(tools.url, approvals={"console_url": BASE})
    with running.client(timeout_s=20) as client:
        task = client.start_task("refund A-1").task_id
        first = _step_up(client, task, wait=False)
        url = f"{BASE}/approvals/{first.approval_id}"
        retried = _step_up(client, task, wait=False, approval_id=first.approval_id)
        assert (retried.approval_id, retried.approval_url) == (first.approval_id, url)
    with running.client(timeout_s=1.5) as client:  # nobody decides: the deadline comes first
        waited = _step_up(client, task, approval_id=first.approval_id)
    assert (waited.approval_id, waited.approval_url) == (first.approval_id, url)
    assert url in str(waited)
    # The approval is decided through the link's id: nothing about a link changes the rules.
    done = _cli(running, "approve", first.approval_id, "--reason", "ok")
    assert done.returncode == 0, done.stderr
    with running.client() as client:
        result = client.call_tool(
            "payments.refund", REFUND, task_id=task, approval_id=first.approval_id
        )
    assert result.status == 200


def test_item2_without_a_console_url_nothing_carries_a_link(start_sidecar, tools, receiver):
    running = start_sidecar(
        tools.url,
        approvals={"notify_url": f"http://127.0.0.1:{receiver.server_port}/hook"},
    )
    with running.client() as client:
        task = client.start_task("refund A-1").task_id
        pending = _step_up(client, task, wait=False)
    assert pending.approval_id.startswith("ap-")
    assert pending.approval_url == ""
    assert "approve at" not in str(pending)
    [delivery] = _delivered()
    assert delivery["body"]["approval_url"] == ""
    listed = _cli(running, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if pending.approval_id in x]
    assert "http" not in line
    assert json.loads(_cli(running, "show", pending.approval_id).stdout).get("url", "") == ""


def test_item2_a_hostile_retry_id_gets_no_link_and_the_usual_refusal(start_sidecar, tools):
    """An approval id the agent makes up is refused as before and is never put into a URL."""
    running = start_sidecar(tools.url, approvals={"console_url": BASE})
    with running.client() as client:
        task = client.start_task("refund A-1").task_id
        for made_up in (
            "ap-01M80X1VR5QTVTZXSGFGNHPQKG",  # well-formed, unknown
            "../../admin?next=https://evil.example",
            "ap-" + "Z" * 5000,
        ):
            with pytest.raises(Exception) as refused:
                client.call_tool("payments.refund", REFUND, task_id=task, approval_id=made_up)
            assert not isinstance(refused.value, StepUpRequired)
            decision = getattr(refused.value, "decision", None)
            assert decision is None or decision.approval_url == ""
            assert "evil.example/approvals" not in str(refused.value)


def test_review_L6_cli_watch_prints_each_pending_approvals_link(start_sidecar, tools):
    """``agent-sidecar approvals watch`` (its own process): the pending approval's line ends
    with its console page."""
    running = start_sidecar(tools.url, approvals={"console_url": BASE})
    with running.client() as client:
        task = client.start_task("refund A-1").task_id
        approval_id = _step_up(client, task, wait=False).approval_id
    command = [sys.executable, "-m", "sidecar.cli", "approvals", "--admin"]
    command += [running.approvals_address, "--as", "alice", "watch"]
    watch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        line = watch.stdout.readline()  # the pending approvals come first
    finally:
        watch.terminate()
        watch.communicate(timeout=30)
    assert approval_id in line, line
    assert line.rstrip("\n").endswith(f"  {BASE}/approvals/{approval_id}")
