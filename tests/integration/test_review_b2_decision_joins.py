"""Review B2 findings 5 and 13: every decision is its own decision-log event with a
``decision_id`` of its own, and its ``request_id`` joins the audit record of the call that
made it, on every door: model calls and the model list (the front door), MCP calls, lists and
step-up with its approved retry, and AuthZEN (single and boxcarred evaluations). Real
sidecars, real clients, real upstreams, a real receiver."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from tests.integration.test_authzen import POLICY as AUTHZEN_POLICY
from tests.integration.test_authzen import agent, ask, tool
from tests.support.mcp_gateway import APPROVAL, TASK, endpoint_url, gateway_overrides, with_client
from tests.support.mcp_upstream import HttpMcpServer
from tests.support.opa_receiver import OpaReceiver
from tests.support.otlp_receiver import wait_for
from tests.support.policies import write_policy
from tests.support.unix_http import UnixConnection

FAST = {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1}


@pytest.fixture
def receiver() -> Iterator[OpaReceiver]:
    r = OpaReceiver()
    yield r
    r.stop()


def _logs(receiver: OpaReceiver) -> dict[str, Any]:
    return {"decision_logs": {"url": receiver.url, "reporting": FAST}}


def _records(running: Any, rpc_prefix: str) -> list[dict[str, Any]]:
    lines = running.audit_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        r
        for r in records
        if r.get("type") == "call" and r["rpc"].startswith(rpc_prefix) and r.get("decision")
    ]


def _joined(receiver: OpaReceiver, records: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Each audit record's events (by request_id); every event's decision_id its own."""
    ids = {r["decision_id"] for r in records}
    assert ids, "no audited decision"
    events = wait_for(
        lambda: (e := receiver.snapshot_events()) and {x["request_id"] for x in e} >= ids and e,
        what="every audited call's decisions exported",
    )
    repeated = [i for i, n in Counter(e["decision_id"] for e in events).items() if n > 1]
    assert not repeated, f"decision_ids shared by several events: {repeated}"
    assert all(e["decision_id"] not in ids for e in events)  # not the call's id
    by_call: dict[str, list[dict]] = {}
    for event in events:
        by_call.setdefault(event["request_id"], []).append(event)
    return by_call


def test_review_b2_5_model_calls_and_the_model_list(start_sidecar, tools, models, receiver):
    running = start_sidecar(
        tools.url,
        providers={"openai": {"base_url": models.url}},
        models={m: {"provider": "openai"} for m in ("gpt-a", "gpt-b", "gpt-c")},
        frontdoor={"listen": "127.0.0.1:0"},
        policy=_logs(receiver),
    )
    base = f"http://127.0.0.1:{running.sidecar.frontdoor.port}/v1"
    with urllib.request.urlopen(f"{base}/models", timeout=10) as answer:
        listed = [m["id"] for m in json.loads(answer.read())["data"]]
    body = {"model": listed[0], "messages": [{"role": "user", "content": "hello"}]}
    request = urllib.request.Request(
        f"{base}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    by_call = _joined(receiver, _records(running, ""))
    sizes = sorted(len(v) for v in by_call.values())
    assert sizes[-1] >= 3  # the list: a decision per model, each its own event
    assert len(by_call) >= 2  # the list and the model call, each joined


@pytest.fixture
def notes() -> Iterator[HttpMcpServer]:
    with HttpMcpServer() as server:
        yield server


def test_review_b2_5_mcp_list_call_and_step_up(start_sidecar, tools, notes, tmp_path, receiver):
    settings = gateway_overrides(tmp_path, notes)
    settings["policy"] = {**settings.get("policy", {}), **_logs(receiver)}
    running = start_sidecar(tools.url, **settings)
    url = endpoint_url(running)

    async def names(client: Client) -> list[str]:
        return [t.name for t in (await client.list_tools()).tools]

    assert "notes.add" in with_client(url, names)
    task = running.client().start_task("clean up")

    async def purge(client: Client) -> Any:
        from mcp.shared.exceptions import MCPError

        try:
            await client.call_tool("notes.purge", {}, meta={TASK: task.task_id})
        except MCPError as exc:
            return exc.error.data["approval_id"]
        raise AssertionError("no step-up")

    approval_id = with_client(url, purge)
    with running.approvals() as approvals:
        approvals.approve(approval_id, reason="ok to purge")

    async def retry(client: Client) -> Any:
        return await client.call_tool(
            "notes.purge", {}, meta={TASK: task.task_id, APPROVAL: approval_id}
        )

    assert not with_client(url, retry).is_error
    records = _records(running, "MCP")
    by_call = _joined(receiver, records)
    effects = [e["result"]["effect"] for events in by_call.values() for e in events]
    assert "step_up" in effects and "allow" in effects
    assert max(len(v) for v in by_call.values()) >= 2  # the list: one event per entry


def test_review_b2_5_authzen_single_and_boxcarred(start_sidecar, tools, tmp_path, receiver):
    policy_dir = write_policy(tmp_path / "policy", AUTHZEN_POLICY)
    start = start_sidecar(
        tools.url,
        policy={"dir": str(policy_dir), **_logs(receiver)},
        authzen={"listen": f"unix://{tmp_path}/authzen.sock"},
    )
    pdp = UnixConnection(str(tmp_path / "authzen.sock"))
    single = {"subject": agent(), "resource": tool("payments.refund", amount=500),
              "action": {"name": "act"}}  # fmt: skip
    status, doc, _ = ask(pdp, "POST", "/access/v1/evaluation", single)
    assert status == 200 and doc["context"]["effect"] == "step_up"
    boxcar = {
        "subject": agent(),
        "action": {"name": "call"},
        "evaluations": [
            {"resource": tool("tickets.get", id="1")},
            {"resource": tool("tickets.close", id="1")},
        ],
    }
    status, _, _ = ask(UnixConnection(str(tmp_path / "authzen.sock")), "POST",
                       "/access/v1/evaluations", boxcar)  # fmt: skip
    assert status == 200
    by_call = _joined(receiver, _records(start, "AuthZEN"))
    effects = sorted(e["result"]["effect"] for v in by_call.values() for e in v)
    assert "step_up" in effects and effects.count("deny") + effects.count("allow") >= 2
