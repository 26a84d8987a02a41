"""The budget attacks of issue 33 item 5, run as a hostile agent would: the unmodified
`openai` SDK against one or more front doors, calls all in flight at once (the provider holds
each request until every call has either reached it or been refused), against a task or
subject budget. Used by tests/integration/test_budgets_hold.py; with
``AGENT_SIDECAR_BUDGET_REPORT=FILE`` set, each attack appends its budget / charged / relayed
to FILE as one JSON line before the test asserts anything (to measure a checkout, old or new).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from tests.support.fleet import poll
from tests.support.usage_provider import UsageProvider

__all__ = ["Attack", "CallOutcome", "charged", "record", "run_attack"]

AGENT = "spiffe://demo.example/agent/support"
CJK_PROMPT = "请总结这份季度报告的要点并列出风险。" * 20  # 360 characters, 1,080 UTF-8 bytes


@dataclass
class CallOutcome:
    status: int  # 200, or the HTTP status of the refusal
    code: str = "ok"
    should_retry: str | None = None  # the x-should-retry header of a refusal


@dataclass
class Attack:
    """``calls`` identical chat requests (``request``: SDK keyword arguments) spread over the
    ``front_doors`` in turn, all in flight at once when ``together``."""

    request: dict[str, Any]
    calls: int
    task_id: str = ""
    together: bool = True
    outcomes: list[CallOutcome] = field(default_factory=list)

    @property
    def relayed(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 200)

    @property
    def refused(self) -> list[CallOutcome]:
        return [o for o in self.outcomes if o.status != 200]


def _call(front_door: str, attack: Attack) -> CallOutcome:
    headers = {"x-agent-sidecar-task-id": attack.task_id} if attack.task_id else {}
    client = openai.OpenAI(base_url=front_door, api_key="unused", default_headers=headers)
    try:
        answer = client.chat.completions.create(**attack.request)
        if attack.request.get("stream"):
            for _ in answer:  # to the end: the usage chunk settles the reservation
                pass
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return CallOutcome(
            exc.status_code, str(body.get("code")), exc.response.headers.get("x-should-retry")
        )
    finally:
        client.close()
    return CallOutcome(200)


def run_attack(front_doors: Sequence[str], provider: UsageProvider, attack: Attack) -> Attack:
    """Make the attack's calls; with ``together`` the provider answers none until every call
    has reached it or been refused, so no reservation is settled while another is made."""
    before = len(provider.received)
    calls: list[Callable[[], CallOutcome]] = [
        lambda i=i: _call(front_doors[i % len(front_doors)], attack)  # type: ignore[misc]
        for i in range(attack.calls)
    ]
    if not attack.together:
        attack.outcomes = [call() for call in calls]
        return attack
    provider.hold()
    try:
        with ThreadPoolExecutor(attack.calls) as pool:
            futures = [pool.submit(call) for call in calls]
            try:
                poll(
                    lambda: (
                        len(provider.received) - before + sum(f.done() for f in futures)
                        >= attack.calls
                    ),
                    timeout_s=60,
                    what="every call reaching the provider or being refused",
                )
            finally:
                provider.release()
            attack.outcomes = [f.result() for f in futures]
    finally:
        provider.release()
    return attack


def charged(running: Any, *, task_id: str = "", subject: str = AGENT) -> int:
    """What the state store holds against the task (or, without one, the subject today)."""
    db = running.sidecar.calls.models._budgets._db
    if task_id:
        rows = db.query("SELECT tokens FROM tasks WHERE id = ?", (task_id,))
    else:
        rows = db.query("SELECT SUM(tokens) AS tokens FROM usage WHERE subject = ?", (subject,))
    return int(rows[0]["tokens"] or 0) if rows else 0


def record(name: str, *, budget: int, charged: int, attack: Attack, reservation: int) -> None:
    """Append the attack's numbers to ``$AGENT_SIDECAR_BUDGET_REPORT`` (when set)."""
    path = os.environ.get("AGENT_SIDECAR_BUDGET_REPORT")
    if not path:
        return
    line = {
        "attack": name,
        "budget": budget,
        "charged": charged,
        "calls": attack.calls,
        "relayed": attack.relayed,
        "reservation": reservation,
    }
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")
