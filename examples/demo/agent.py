"""A scripted agent: the calls an AI support agent might make, through its sidecar only.

It holds no upstream URL and no credential: just the sidecar's address.
Run alone against a running sidecar: ``python examples/demo/agent.py unix:/tmp/agent.sock``.
"""

from __future__ import annotations

import sys
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

    def __str__(self) -> str:
        reasons = "; ".join(self.reasons) or "-"
        mark = "" if self.effect == self.expected else f"   <-- expected {self.expected}"
        return f"{self.tool:<16} {self.effect:<8} {self.decision_id}  {reasons}{mark}"


def run(address: str) -> list[Line]:
    lines = []
    with SidecarClient(address, timeout_s=10) as sidecar:
        for tool, arguments, expected in SCRIPT:
            try:
                result = sidecar.call_tool(tool, arguments, task_id="demo-task", intent="support")
                decision = result.decision
            except SidecarCallError as exc:
                if exc.decision is None:
                    raise
                decision = exc.decision
            lines.append(
                Line(tool, decision.effect, expected, decision.reasons, decision.decision_id)
            )
    return lines


if __name__ == "__main__":
    for line in run(sys.argv[1]):
        print(line)
