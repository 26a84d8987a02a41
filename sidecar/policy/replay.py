"""``agent-sidecar policy replay``: what a candidate policy would have decided for the calls
an audit log recorded (those recorded with their input, i.e. under a ``full`` or ``redacted``
log obligation; under ``redacted`` the arguments are the redacted ones).

``to_rego_tests`` turns the changed cases into a ``*_test.rego`` file that pins the candidate's
new answers; its inputs are given per key as literals (``with input.subject as {...}``), a
form both OPA and the embedded engine evaluate correctly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.policy.decision import Decision, DecisionError, parse_decision
from sidecar.policy.embedded import EmbeddedEngine

__all__ = ["Change", "ReplayReport", "replay", "to_rego_tests"]


@dataclass(frozen=True)
class Change:
    decision_id: str
    tool: str
    old_effect: str
    new_effect: str
    old_reasons: tuple[str, ...]
    new_reasons: tuple[str, ...]
    input: dict[str, Any]

    @property
    def flips_allow(self) -> bool:
        """An allowed call would now be refused, or a refused one allowed."""
        return (self.old_effect == "allow") != (self.new_effect == "allow")


@dataclass(frozen=True)
class ReplayReport:
    records: int
    replayed: int
    changes: list[Change]
    revision: str


def _records(audit: Path) -> Iterator[dict[str, Any]]:
    for line in audit.read_text(encoding="utf-8").split("\n"):  # not U+2028 or U+0085
        if line.strip():
            record = json.loads(line)
            if record.get("type") == "call":
                yield record


def replay(audit: str | Path, policy_dir: str | Path, query: str) -> ReplayReport:
    engine = EmbeddedEngine.from_dir(policy_dir, query, workers=1)
    changes, records, replayed = [], 0, 0
    try:
        for record in _records(Path(audit)):
            records += 1
            input_doc, old = record.get("input"), record.get("decision")
            if not input_doc or not old:
                continue
            replayed += 1
            try:
                result = engine.evaluate_sync(input_doc)
                new = parse_decision(result.value, defined=result.defined)
            except DecisionError as exc:
                new = Decision.fail_closed(exc)
            if new.effect != old["effect"] or list(new.reasons) != old.get("reasons", []):
                changes.append(
                    Change(
                        decision_id=record["decision_id"],
                        tool=input_doc["action"]["name"],
                        old_effect=old["effect"],
                        new_effect=new.effect,
                        old_reasons=tuple(old.get("reasons", [])),
                        new_reasons=new.reasons,
                        input=input_doc,
                    )
                )
    finally:
        engine.close()
    return ReplayReport(records, replayed, changes, engine.revision)


def to_rego_tests(changes: list[Change], query: str) -> str:
    """A Rego test file pinning each change's new effect and reasons under the candidate."""
    package = query.removeprefix("data.").rpartition(".")[0] + "_test"
    lines = [
        "# Written by `agent-sidecar policy replay --to-tests`: calls from an audit log whose",
        "# decision changed under the candidate policy. Each test pins the candidate's answer.",
        f"package {package}",
        "",
        "import rego.v1",
    ]
    for change in changes:
        name = "test_replay_" + re.sub(r"[^a-z0-9_]", "_", change.decision_id.lower())
        expected = json.dumps(
            {"effect": change.new_effect, "reasons": list(change.new_reasons)}, sort_keys=True
        )
        withs = "\n\t\t".join(
            f"with input.{key} as {json.dumps(value, sort_keys=True)}"
            for key, value in sorted(change.input.items())
        )
        lines += [
            "",
            f"# {change.tool}: {change.old_effect} -> {change.new_effect}",
            f"{name} if {{",
            f"\td := {query} {withs}",
            f'\t{{"effect": d.effect, "reasons": object.get(d, "reasons", [])}} == {expected}',
            "}",
        ]
    return "\n".join(lines) + "\n"
