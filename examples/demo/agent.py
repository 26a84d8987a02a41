"""A scripted agent: the calls an AI support agent might make, through its sidecar only.

It holds no upstream URL and no credential: just the sidecar's address.
Run alone against a running sidecar: ``python examples/demo/agent.py unix:/tmp/agent.sock``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.client import SidecarCallError, SidecarClient

# (tool, arguments, the effect the baseline policy should give)
SCRIPT: list[tuple[str, dict[str, Any], str]] = [
    ("tickets.get", {"id": "7"}, "allow"),
    ("kb.search", {"q": "printer"}, "allow"),
    ("tickets.create", {"title": "Printer on fire", "reporter": "jane@example.com"}, "allow"),
    ("partner.notify", {"note": "jane@example.com asked for a call back"}, "allow"),
    ("partner.notify", {"note": "card on file: 4111 1111 1111 1111"}, "deny"),
    ("tickets.close", {"id": "7"}, "deny"),
    ("payments.refund", {"order": "A-1001", "amount": 40}, "allow"),
    ("payments.refund", {"order": "A-1002", "amount": 500}, "step_up"),
]


@dataclass(frozen=True)
class Line:
    tool: str
    effect: str
    expected: str
    reasons: tuple[str, ...]
    decision_id: str
    note: str = ""

    def __str__(self) -> str:
        reasons = "; ".join(self.reasons) or self.note or "-"
        mark = "" if self.effect == self.expected else f"   <-- expected {self.expected}"
        return f"{self.tool:<16} {self.effect:<8} {self.decision_id}  {reasons}{mark}"


def _call(
    sidecar: SidecarClient, tool: str, arguments: dict[str, Any], expected: str, **kwargs: Any
) -> tuple[Line, SidecarCallError | None]:
    try:
        decision = sidecar.call_tool(tool, arguments, **kwargs).decision
        error = None
    except SidecarCallError as exc:
        if exc.decision is None:
            raise
        decision, error = exc.decision, exc
    effect = decision.effect or "deny"  # refused before policy (e.g. task_ended)
    # Refused before policy, the code names it (the reasons carry the sidecar's message).
    reasons = (error.code,) if error and not decision.effect else decision.reasons
    if decision.approval_id and error is not None:
        reasons = (*reasons, f"approval {decision.approval_id}")
    return Line(tool, effect, expected, tuple(reasons), decision.decision_id), error


def run(address: str, approve: Callable[[str], str] | None = None) -> list[Line]:
    """Run the script under one task; a step-up is approved with ``approve`` (a human's job),
    then the call is retried with the approval, reused once (refused), and finally a call
    after the task ended is refused."""
    lines = []
    with SidecarClient(address, timeout_s=10) as sidecar:
        task = sidecar.start_task("help jane with her printer ticket", ttl_s=600)
        step_up: tuple[str, dict[str, Any], str] | None = None
        for tool, arguments, expected in SCRIPT:
            line, error = _call(
                sidecar, tool, arguments, expected, task_id=task.task_id, wait=False
            )
            lines.append(line)
            if error is not None and error.code == "approval_required":
                step_up = (tool, arguments, error.decision.approval_id if error.decision else "")
        if step_up is not None and approve is not None:
            tool, arguments, approval_id = step_up
            note = approve(approval_id)
            for expected in ("allow", "deny"):  # used once; the second use is refused
                line, _ = _call(
                    sidecar,
                    tool,
                    arguments,
                    expected,
                    task_id=task.task_id,
                    approval_id=approval_id,
                )
                if expected == "allow":
                    line = dataclasses.replace(line, note=f"retried after: {note}")
                lines.append(line)
        sidecar.end_task(task.task_id)
        line, _ = _call(sidecar, "tickets.get", {"id": "7"}, "deny", task_id=task.task_id)
        lines.append(line)
    return lines


# (model alias, prompt, the effect the baseline policy should give)
MODEL_SCRIPT: list[tuple[str, str, str]] = [
    ("gpt-small", "Summarise: jane@example.com says the printer is on fire", "allow"),
    ("gpt-small", "Refund card 4111 1111 1111 1111 for jane", "deny"),
]


def run_models(base_url: str) -> list[Line]:
    """Model calls with the unmodified openai SDK through the sidecar's front door: no
    provider key here (the api key is ignored in pod mode)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-a-provider-key", max_retries=0)
    lines = []
    for model, prompt, expected in MODEL_SCRIPT:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}]
            )
            answer = raw.parse()
            usage = answer.usage.total_tokens if answer.usage else 0
            decision_id = raw.headers.get("x-agent-sidecar-decision-id", "")
            lines.append(Line(model, "allow", expected, (), decision_id, note=f"{usage} tokens"))
        except openai.APIStatusError as exc:
            error = exc.body if isinstance(exc.body, dict) else {}
            lines.append(
                Line(
                    model,
                    "deny",
                    expected,
                    tuple(error.get("reasons") or [error.get("code", "")]),
                    error.get("decision_id", ""),
                )
            )
    return lines


def run_responses(base_url: str) -> list[Line]:
    """One OpenAI Responses API call (what the OpenAI Agents SDK uses by default) with the
    unmodified ``openai`` SDK, streamed: the phone number in the instructions is redacted on
    the way, the text arrives as ``response.output_text.delta`` events."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-a-provider-key", max_retries=0)
    try:
        with client.responses.stream(
            model="gpt-small",
            instructions="If unsure, tell the customer to call +1 415 555 0100",
            input="Where is my order?",
        ) as stream:
            final = stream.get_final_response()
            decision_id = stream._response.headers.get("x-agent-sidecar-decision-id", "")
    except openai.APIStatusError as exc:
        error = exc.body if isinstance(exc.body, dict) else {}
        reasons = tuple(error.get("reasons") or [error.get("code", "")])
        return [Line("gpt-small", "deny", "allow", reasons, error.get("decision_id", ""))]
    tokens = final.usage.total_tokens if final.usage else 0
    note = f"{tokens} tokens (OpenAI Responses API, streamed)"
    return [Line("gpt-small", "allow", "allow", (), decision_id, note=note)]


def run_anthropic(base_url: str) -> list[Line]:
    """One Anthropic Messages API call with the unmodified ``anthropic`` SDK through the same
    front door (``base_url`` without ``/v1``): the SDK's api key is ignored in pod mode, the
    provider gets the sidecar's key as ``x-api-key``, and the email is redacted on the way."""
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key="not-a-provider-key", max_retries=0)
    prompt = "Draft a reply to jane@example.com about her refund"
    try:
        raw = client.messages.with_raw_response.create(
            model="claude-small", max_tokens=200, messages=[{"role": "user", "content": prompt}]
        )
    except anthropic.APIStatusError as exc:
        error = (exc.body or {}).get("error", {}) if isinstance(exc.body, dict) else {}
        reasons = tuple(error.get("reasons") or [error.get("code", "")])
        return [Line("claude-small", "deny", "allow", reasons, error.get("decision_id", ""))]
    usage = raw.parse().usage
    tokens = usage.input_tokens + usage.output_tokens
    decision_id = raw.headers.get("x-agent-sidecar-decision-id", "")
    note = f"{tokens} tokens (Anthropic Messages API)"
    return [Line("claude-small", "allow", "allow", (), decision_id, note=note)]


def run_mcp(address: str, url: str) -> list[Line]:
    """MCP calls with the official ``mcp`` client through the sidecar's MCP endpoint: the
    list shows only the granted tools, an act call runs under a task, a tool the list hides
    is refused when called by name."""
    import asyncio

    from mcp import Client
    from mcp.shared.exceptions import MCPError

    def decision_id(result: Any) -> str:
        return (result.meta or {}).get("agent-sidecar.io/decision_id", "")

    async def script(task_id: str) -> list[Line]:
        lines = []
        async with Client(url) as client:
            listed = await client.list_tools()
            shown = ", ".join(sorted(t.name for t in listed.tools))
            lines.append(
                Line("mcp tools/list", "allow", "allow", (), decision_id(listed), f"shows {shown}")
            )
            for tool, arguments, meta, expected in (
                ("notes.search", {"query": "printer"}, None, "allow"),
                (
                    "notes.add",
                    {"text": "called jane back"},
                    {"agent-sidecar.io/task_id": task_id},
                    "allow",
                ),
                ("notes.export_all", {"destination": "pastebin"}, None, "deny"),
            ):
                try:
                    result = await client.call_tool(tool, arguments, meta=meta)
                    text = " ".join(c.text for c in result.content if getattr(c, "text", None))
                    lines.append(Line(tool, "allow", expected, (), decision_id(result), text))
                except MCPError as exc:
                    data = exc.error.data or {}
                    reasons = tuple(data.get("reasons") or [data.get("code", str(exc))])
                    lines.append(Line(tool, "deny", expected, reasons, data.get("decision_id", "")))
        return lines

    with SidecarClient(address, timeout_s=10) as sidecar:
        task = sidecar.start_task("note the call back", ttl_s=600)
        try:
            return asyncio.run(script(task.task_id))
        finally:
            sidecar.end_task(task.task_id)


if __name__ == "__main__":
    for line in run(sys.argv[1]):
        print(line)
