""" "What may this agent do?": every resource of the catalog decided for one subject, locally.

The policy input of each row is built by the same mapping as an AuthZEN evaluation
(:func:`sidecar.authzen.mapping.to_action`, then :func:`sidecar.policy.build_input`), with no
arguments, no delegation and no approval, and no task unless one is given (a fresh one: no
calls, no tokens): what a first call would be asked. The
engine is the configured one (``build_engine``), called directly: nothing is relayed and no
audit record is written (no sidecar is involved).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.authzen.catalog import RESOURCE_TYPES, Catalog, CatalogEntry
from sidecar.authzen.mapping import to_action
from sidecar.identity.subject import Subject
from sidecar.ids import new_decision_id
from sidecar.policy import Decision, DecisionError, TaskInfo, build_input, parse_decision
from sidecar.users.user import User

__all__ = ["Row", "explain"]


@dataclass(frozen=True)
class Row:
    type: str
    id: str
    operation: str
    effect: str
    code: str
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.type,
            "id": self.id,
            "operation": self.operation,
            "effect": self.effect,
            "code": self.code,
            "reasons": list(self.reasons),
        }


def explain(
    engine: object,
    catalog: Catalog,
    subject: Subject,
    user: User | None,
    task: TaskInfo | None = None,
) -> list[Row]:
    """One row per tool, model, pinned MCP tool (and A2A peer skill, none in this build)."""
    entries: list[CatalogEntry] = []
    for kind in RESOURCE_TYPES:
        entries.extend(catalog.entries(kind))
    entries.extend(catalog.peers())
    return [_decide(engine, entry, subject, user, task) for entry in entries]


def _decide(
    engine: object,
    entry: CatalogEntry,
    subject: Subject,
    user: User | None,
    task: TaskInfo | None,
) -> Row:
    input_doc = build_input(
        request_id=new_decision_id(),
        time_ns=time.time_ns(),
        subject=subject,
        action=to_action(entry, {}),
        user=user,
        task=task,
    )
    try:
        result = engine.evaluate_sync(input_doc)  # type: ignore[attr-defined]
        decision = parse_decision(result.value, defined=result.defined)
    except DecisionError as exc:  # an engine failure is a deny with its code, as in a call
        decision = Decision.fail_closed(exc)
    return Row(
        entry.type,
        entry.id,
        entry.operation,
        decision.effect,
        decision.code,
        tuple(decision.reasons),
    )


def table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (KIND NAME OPERATION EFFECT REASONS)."""
    header = ("KIND", "NAME", "OPERATION", "EFFECT", "REASONS")
    cells = [(r.type, r.id, r.operation, r.effect, "; ".join(r.reasons) or "-") for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(4)]
    lines = []
    for cell in [header, *cells]:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cell[:4], widths, strict=True)) + "  " + cell[4]
        )
    return "\n".join(line.rstrip() for line in lines)
