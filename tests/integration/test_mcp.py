"""The MCP gateway with real parts only: the official SDK's client, through a real sidecar, to
real upstream MCP servers built with the official SDK (``notes`` over Streamable HTTP,
``tracker`` over stdio), under the shipped baseline policy."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support.mcp_gateway import (
    APPROVAL,
    INTERN,
    TASK,
    endpoint_url,
    gateway_overrides,
    with_client,
)
from tests.support.mcp_upstream import FAIL_CODE, POISON, SECRET, HttpMcpServer

MODES = ["legacy", "2026-07-28"]
DENIED, APPROVAL_REQUIRED, UNAVAILABLE = -32010, -32011, -32013


@pytest.fixture
def notes():
    with HttpMcpServer() as server:
        yield server


@pytest.fixture
def gateway(start_sidecar, tools, notes, tmp_path):
    """A started sidecar with the MCP endpoint (``.url``); more settings by calling it.
    Stopped before the upstream is (its session to it is closed first)."""
    started = []

    def start(**overrides: Any) -> Any:
        settings = gateway_overrides(tmp_path, notes, **overrides.pop("mcp", {}))
        settings.update(overrides)
        running = start_sidecar(tools.url, **settings)
        running.url = endpoint_url(running)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def audit_records(running: Any, rpc_prefix: str = "MCP") -> list[dict[str, Any]]:
    lines = running.audit_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if r.get("type") == "call" and r["rpc"].startswith(rpc_prefix)]


def call_error(url: str, name: str, arguments: dict[str, Any], mode: str = "legacy", **kw):
    async def run(client: Client) -> Any:
        with pytest.raises(MCPError) as caught:
            await client.call_tool(name, arguments, **kw)
        return caught.value.error

    return with_client(url, run, mode=mode)


def call(url: str, name: str, arguments: dict[str, Any], mode: str = "legacy", **kw) -> Any:
    async def run(client: Client) -> Any:
        return await client.call_tool(name, arguments, **kw)

    return with_client(url, run, mode=mode)


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content if getattr(c, "text", None))


# --- lists ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_list_shows_each_identity_only_its_granted_tools(gateway, start_sidecar, mode):
    running = gateway()

    async def names(client: Client) -> list[str]:
        return sorted(t.name for t in (await client.list_tools()).tools)

    support = with_client(running.url, names, mode=mode)
    assert "notes.search" in support and "notes.add" in support and "notes.purge" in support
    assert {"tracker.search", "tracker.add", "tracker.crash"} <= set(support)  # tracker.*
    # Not granted: never shown (crash, pid and mutate of notes).
    assert not {"notes.crash", "notes.pid", "notes.mutate"} & set(support)
    running.stop()  # the next sidecar serves on the same agent socket
    intern = gateway(identity={"mode": "static", "spiffe_id": INTERN})
    assert with_client(intern.url, names, mode=mode) == ["notes.search"]
    listed = [r for r in audit_records(intern) if r["rpc"] == "MCP tools/list"]
    assert listed[-1]["upstream"]["shown"] == 1
    assert "notes.add" in listed[-1]["upstream"]["hidden"]


def test_prompts_and_resources_are_aggregated_and_filtered(gateway):
    running = gateway()

    async def run(client: Client) -> Any:
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        resources = [str(r.uri) for r in (await client.list_resources()).resources]
        prompt = await client.get_prompt("notes.greet", {"who": "Ada"})
        read = await client.read_resource("notes.notes://welcome")
        return prompts, resources, prompt, read

    prompts, resources, prompt, read = with_client(running.url, run)
    assert prompts == ["notes.greet"]  # tracker.greet: no read grant on it
    assert resources == ["notes.notes://welcome"]
    assert "Ada" in prompt.messages[0].content.text
    assert read.contents[0].text == "Welcome to the notes."


# --- calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_call_is_relayed_and_audited_once(gateway, mode):
    running = gateway()
    task = running.client().start_task("write notes")
    result = call(running.url, "notes.add", {"text": "buy milk"}, mode, meta={TASK: task.task_id})
    assert not result.is_error
    assert text_of(result) == "added: buy milk"
    records = [r for r in audit_records(running) if r["rpc"] == "MCP tools/call"]
    assert len(records) == 1
    record = records[0]
    assert record["outcome"]["code"] == "ok" and record["outcome"]["relayed"] is True
    assert record["action"]["kind"] == "mcp" and record["action"]["name"] == "notes.add"
    assert record["input"]["action"]["phase"] == "call"
    assert record["input"]["action"]["definition"]["changed"] is False
    assert record["task"]["id"] == task.task_id


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_call_is_a_json_rpc_error_with_the_decision(gateway, mode):
    running = gateway()
    error = call_error(running.url, "notes.add", {"text": "x"}, mode)  # act needs a task
    assert error.code == DENIED
    assert error.data["code"] == "policy_deny"
    assert error.data["decision_id"]
    assert error.data["reasons"] == ["act on notes.add needs a task (StartTask)"]
    # A tool the list hides is denied when called by name.
    hidden = call_error(running.url, "notes.pid", {}, mode)
    assert hidden.code == DENIED
    assert (
        "spiffe://demo.example/agent/support holds no act grant on notes.pid"
        in (hidden.data["reasons"])
    )
    unknown = call_error(running.url, "notes.nope", {}, mode)
    assert unknown.code == -32602 and unknown.data["code"] == "unknown_tool"
    records = audit_records(running)
    calls = [r for r in records if r["rpc"] == "MCP tools/call"]
    assert [r["outcome"]["code"] for r in calls] == ["policy_deny", "policy_deny", "unknown_tool"]
    assert not any(r["outcome"]["relayed"] for r in calls)


def test_an_upstream_json_rpc_error_reaches_the_client_intact(gateway):
    running = gateway()
    task = running.client().start_task("fail")
    error = call_error(running.url, "notes.fail", {}, meta={TASK: task.task_id})
    assert (error.code, error.message, error.data) == (
        FAIL_CODE,
        "quota exhausted",
        {"retry_after_s": 7},
    )
    record = [r for r in audit_records(running) if r["rpc"] == "MCP tools/call"][-1]
    assert record["outcome"]["code"] == "upstream_error"
    assert record["upstream"]["error"] == {"code": FAIL_CODE}


# --- step-up ----------------------------------------------------------------------------


def test_step_up_answers_with_the_approval_id_and_a_retry_is_relayed_once(gateway):
    running = gateway()
    task = running.client().start_task("clean up")
    error = call_error(running.url, "notes.purge", {}, meta={TASK: task.task_id})
    assert error.code == APPROVAL_REQUIRED
    assert error.data["code"] == "approval_required"
    approval_id = error.data["approval_id"]
    assert "marked destructive" in error.data["reasons"][0]
    with running.approvals() as approvals:
        approvals.approve(approval_id, reason="ok to purge")
    retry = {TASK: task.task_id, APPROVAL: approval_id}
    assert text_of(call(running.url, "notes.purge", {}, meta=retry)) == "purged"
    again = call_error(running.url, "notes.purge", {}, meta=retry)
    assert again.code == DENIED and again.data["code"] == "approval_used"


def test_step_up_waits_for_the_approver_within_the_deadline(gateway):
    running = gateway(mcp={"wait_for_approval_s": 30})
    task = running.client().start_task("clean up")
    approved = threading.Event()

    def approver() -> None:
        with running.approvals() as approvals:
            for event in approvals.watch():
                if (
                    event.type in ("pending", "created")
                    and event.approval.action_name == "notes.purge"
                ):
                    approvals.approve(event.approval.id, reason="go")
                    approved.set()
                    return

    threading.Thread(target=approver, daemon=True).start()
    result = call(running.url, "notes.purge", {}, meta={TASK: task.task_id})
    assert text_of(result) == "purged" and approved.is_set()


# --- obligations ------------------------------------------------------------------------


def test_arguments_and_results_are_redacted_as_policy_obliges(
    notes, start_sidecar, tools, tmp_path
):
    from tests.support.mcp_gateway import TEST_GRANTS, baseline_policy

    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    # notes made an external target: the baseline redacts emails sent to it.
    policy = baseline_policy(
        tmp_path, mcp=TEST_GRANTS, targets={"notes": {"external": True}}, redact_external=["email"]
    )
    overrides["policy"] = {"dir": str(policy)}
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)
    task = running.client().start_task("notes")
    added = call(url, "notes.add", {"text": "mail bob@example.com"}, meta={TASK: task.task_id})
    assert text_of(added) == "added: mail [REDACTED:email]"  # the upstream never saw it
    secret = call(url, "notes.secret", {}, meta={TASK: task.task_id})
    assert SECRET not in text_of(secret) and "[REDACTED:secret]" in text_of(secret)
    assert SECRET not in running.audit_path.read_text()


# --- upstreams that fail ----------------------------------------------------------------


def test_a_stdio_upstream_that_crashes_is_restarted(gateway):
    running = gateway()
    task = running.client().start_task("track")
    meta = {TASK: task.task_id}
    first = text_of(call(running.url, "tracker.pid", {}, meta=meta))
    error = call_error(running.url, "tracker.crash", {}, meta=meta)
    assert error.code == UNAVAILABLE and error.data["code"] == "upstream_unavailable"
    second = None
    for _ in range(200):  # bounded: until the supervisor has started it again
        try:
            second = text_of(call(running.url, "tracker.pid", {}, meta=meta))
            break
        except MCPError as exc:
            assert exc.error.data["code"] in ("upstream_unavailable", "upstream_timeout")
    assert second is not None and second != first
    assert running.sidecar.mcp.upstreams["tracker"].starts == 2
    running.stop()  # the server stops with the sidecar (its whole process group)
    for _ in range(200):  # bounded: until the kernel has reaped it
        if not os.path.exists(f"/proc/{second}") or "Z" in _state(int(second)):
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail(f"the stdio server {second} outlived the sidecar")


def test_a_slow_upstream_within_and_past_its_timeout(gateway):
    running = gateway()
    task = running.client().start_task("wait")
    meta = {TASK: task.task_id}
    assert text_of(call(running.url, "notes.slow", {"seconds": 0.1}, meta=meta)) == "slept 0.1"
    error = call_error(running.url, "notes.slow", {"seconds": 8}, meta=meta)  # timeout_s 5
    assert error.code == UNAVAILABLE and error.data["code"] == "upstream_timeout"
    # The session survives: the next call is fine.
    assert text_of(call(running.url, "notes.search", {"query": "q"}, meta=meta)) == "found: q"


# --- definitions ------------------------------------------------------------------------


def test_a_changed_definition_is_hidden_and_denied_until_accepted(gateway, notes):
    running = gateway()
    heard: list[str] = []
    changed = asyncio.Event()

    async def handler(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", "")
        heard.append(method)
        if method == "notifications/tools/list_changed":
            changed.set()

    async def rug_pull(client: Client) -> Any:
        before = {t.name: t for t in (await client.list_tools()).tools}
        await client.call_tool("notes.search", {"query": "a"})  # the sidecar's session is known
        async with Client(notes.url, mode="legacy") as direct:  # the upstream changes itself
            await direct.call_tool("mutate", {})
        await asyncio.wait_for(changed.wait(), 10)
        after = {t.name: t for t in (await client.list_tools()).tools}
        with pytest.raises(MCPError) as denied:
            await client.call_tool("notes.search", {"query": "b"})
        return before, after, denied.value.error

    before, after, denied = with_client(running.url, rug_pull, message_handler=handler)
    assert "notes.search" in before and "notes.search" not in after
    assert "notifications/tools/list_changed" in heard
    assert denied.code == DENIED and "changed since it was pinned" in denied.data["reasons"][0]
    with running.approvals() as admin:
        (definition,) = admin.mcp_definitions(changed_only=True)
        assert definition.name == "notes.search" and definition.changed
        assert POISON in definition.definition_json
        with pytest.raises(Exception, match="review it again"):
            admin.mcp_accept("notes.search", hash=definition.pinned_hash, reason="stale")
        accepted = admin.mcp_accept("notes.search", hash=definition.hash, reason="reviewed")
        assert accepted.pinned_hash == definition.hash and not accepted.changed
    listed = with_client(running.url, lambda c: c.list_tools())
    shown = {t.name: t for t in listed.tools}
    assert shown["notes.search"].description == POISON  # shown as accepted
    assert text_of(call(running.url, "notes.search", {"query": "c"})) == "found: c"
    lines = [json.loads(x) for x in running.audit_path.read_text().splitlines()]
    (record,) = [r for r in lines if r.get("type") == "mcp_definition"]
    assert record["name"] == "notes.search" and record["actor"] == "local:alice"
    assert record["reason"] == "reviewed" and record["definition_hash"] == definition.hash


def test_pins_persist_across_a_restart(gateway, start_sidecar, tools, notes, tmp_path):
    running = gateway()
    with_client(running.url, lambda c: c.list_tools())
    pins = running.sidecar.mcp.pins.all()
    assert "notes.search" in pins and pins["notes.search"].pinned_by == "first-seen"
    running.stop()
    with_client(notes.url, lambda c: c.call_tool("mutate", {}))  # changed while it was down
    again = gateway()
    names = [t.name for t in with_client(again.url, lambda c: c.list_tools()).tools]
    assert "notes.search" not in names and "notes.add" in names


def test_a_stateless_client_hears_of_list_changes_on_its_listen_stream(gateway, notes):
    running = gateway()
    assert running.sidecar.mcp.upstreams["notes"].modern is True  # the SDK server offers it

    async def run(client: Client) -> Any:
        async with client.listen(tools_list_changed=True) as subscription:
            async with Client(notes.url, mode="2026-07-28") as direct:
                await direct.call_tool("mutate", {})
            async with asyncio.timeout(10):
                async for event in subscription:
                    return type(event).__name__

    assert with_client(running.url, run, mode="2026-07-28") == "ToolsListChanged"


def test_the_operator_reviews_and_accepts_a_definition_with_the_cli(gateway, notes):
    from tests.support.cli import cli

    running = gateway()
    with_client(running.url, lambda c: c.list_tools())  # pinned as first seen
    with_client(notes.url, lambda c: c.call_tool("mutate", {}))
    running.sidecar.mcp.catalog.invalidate("notes", "tool")  # as a list_changed would
    admin = ["mcp", "--admin", running.approvals_address, "--as", "carol"]
    listed = cli(*admin, "list", "--changed")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("notes.search  CHANGED")
    shown = cli(*admin, "show", "notes.search")
    assert shown.returncode == 0 and POISON in shown.stdout
    digest = shown.stdout.split("hash:", 1)[1].split()[0]
    missing = cli(*admin, "accept", "notes.search", "--hash", digest)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    stale = cli(*admin, "accept", "notes.search", "--hash", "sha256:0", "--reason", "x")
    assert stale.returncode == 1 and "review it again" in stale.stderr
    accepted = cli(*admin, "accept", "notes.search", "--hash", digest, "--reason", "reviewed")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == f"notes.search pinned to {digest} by local:carol"
    assert cli(*admin, "list", "--changed").stdout == ""
    unknown = cli(*admin, "show", "notes.nope")
    assert unknown.returncode == 1 and "no MCP tool" in unknown.stderr
