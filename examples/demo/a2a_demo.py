"""The agent-to-agent part of ``make demo``: agent ``support`` asks agent ``billing`` for a
refund over A2A, each behind its own sidecar (examples/demo/a2a_pair.py), and the demo
prints what each sidecar's audit log says about it: the outbound call, the verified inbound
call, and billing's tool call under the task the inbound call opened, with support in its
delegation chain. Returns the printed lines and whether everything was as it should be."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest
from google.protobuf.json_format import MessageToDict

from examples.demo.a2a_pair import SUPPORT, records, start_pair
from examples.demo.billing_agent import BillingAgent
from examples.demo.tools_server import ToolServer
from sidecar.client import SidecarClient

__all__ = ["run_a2a"]


async def _ask(url: str, task_id: str, text: str) -> str:
    """Agent support's side: the unmodified a2a-sdk client, resolving billing's card from its
    own sidecar (the card there points back at the sidecar)."""
    message = Message(role=Role.ROLE_USER, message_id="demo-1", parts=[Part(text=text)])
    message.metadata.update({"skill": "refund"})
    async with httpx.AsyncClient(headers={"X-Agent-Sidecar-Task": task_id}, timeout=30) as http:
        client = await create_client(url, client_config=ClientConfig(httpx_client=http))
        events = [
            MessageToDict(e) async for e in client.send_message(SendMessageRequest(message=message))
        ]
    return "".join(p.get("text", "") for e in events for p in e.get("message", {}).get("parts", []))


def run_a2a(out: Path) -> tuple[list[str], bool]:
    shutil.rmtree(out, ignore_errors=True)
    with ToolServer() as tools:
        return _exchange(out, tools)


def _exchange(out: Path, tools: ToolServer) -> tuple[list[str], bool]:
    agent = BillingAgent(f"unix:{out}/billing/agent.sock")
    pair = start_pair(out, agent_url=agent.url, card=agent.card_dict(), tools_url=tools.url)
    try:
        with SidecarClient(pair.support.address, timeout_s=10) as client:
            task = client.start_task("refund order A-7 for jane").task_id
        answer = asyncio.run(_ask(pair.peer_url, task, "refund order A-7"))
    finally:
        pair.stop()
        agent.stop()
    sent = records(pair.support.audit_path)
    served = records(pair.billing.audit_path)
    lines = ["", "A2A: agent support asks agent billing for a refund, each behind its own sidecar"]
    served.sort(key=lambda r: r["decision_id"])  # ULIDs: in the order they were decided
    for who, record in [("support", r) for r in sent] + [("billing", r) for r in served]:
        action, decision = record["action"], record.get("decision", {})
        task = record.get("task") or {}
        if action["kind"] == "a2a":
            note = f"{action['method']} to peer billing (its pinned card)"
        elif action["kind"] == "a2a_inbound":
            caller = action.get("inbound", {}).get("caller", {})
            note = (
                f"caller {caller.get('id')} verified ({caller.get('via')}); opened {task.get('id')}"
            )
        else:
            origin = task.get("origin", {})
            note = (
                f"under {task.get('id')}: chain {record.get('delegation')}, "
                f"requester {origin.get('requester')}, {origin.get('txn')}"
            )
        lines.append(
            f"  {who:<8} {action['kind']:<12} {action['name']:<15} "
            f"{decision.get('effect', '-'):<6} {record['decision_id']}  {note}"
        )
    lines.append(f"  billing answered support: {answer!r}")
    tool = [r for r in served if r["action"]["kind"] == "tool"]
    jwt = [r.headers.get("authorization", "") for r in tools.received if r.path == "/kb/search"]
    ok = (
        answer == "refund noted; kb: KB-1: restart the printer"
        and [r["outcome"]["code"] for r in sent + served] == ["ok"] * 3
        and len(tool) == 1
        and tool[0]["delegation"] == [SUPPORT]
        and len(jwt) == 1
        and jwt[0].startswith("Bearer ey")
    )
    lines.append(
        "  kb received a JWT-SVID naming billing, minted by billing's sidecar for that call"
    )
    lines.append(
        f"  audit logs: {pair.support.audit_path.parent.parent}/{{support,billing}}/audit.log"
    )
    return lines, ok
