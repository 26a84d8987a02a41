"""``agent-sidecar audit show``: who called which tool, with what outcome, in one table."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["parse_since", "rows", "table"]

COLUMNS = ("TIME", "SUBJECT", "TOOL", "EFFECT", "CODE", "APPROVER", "TOKENS", "REASONS")


def parse_since(value: str) -> int:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time -> unix nanoseconds."""
    match = re.fullmatch(r"(\d+)([smhd])", value)
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time_ns() - seconds * 1_000_000_000
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


def rows(
    files: Iterable[Path],
    *,
    subject: str | None = None,
    tool: str | None = None,
    effect: str | None = None,
    since_ns: int | None = None,
) -> Iterator[tuple[str, ...]]:
    for path in files:
        # Records end at "\n" only: a record may hold U+2028 or U+0085 in its text,
        # which str.splitlines() would take for line ends (hiding the record).
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                record: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if record.get("type") != "call":
                continue
            who = (record.get("subject") or {}).get("spiffe_id", "-")
            what = (record.get("action") or {}).get("name", "-")
            decision = record.get("decision") or {}
            did = decision.get("effect", "-")
            if (
                (subject and subject != who)
                or (tool and tool != what)
                or (effect and effect != did)
            ):
                continue
            if since_ns and record.get("time_ns", 0) < since_ns:
                continue
            approval = (record.get("input") or {}).get("approval") or {}
            usage = record.get("usage") or {}
            yield (
                str(record.get("time", ""))[:19],
                who,
                what,
                did,
                (record.get("outcome") or {}).get("code", "-"),
                approval.get("approved_by", "-"),
                str(usage.get("total_tokens", "-")),
                "; ".join(decision.get("reasons", [])) or "-",
            )


def table(found: Iterable[tuple[str, ...]]) -> str:
    found = list(found)
    widths = [max([len(c)] + [len(r[i]) for r in found]) for i, c in enumerate(COLUMNS[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS[:-1], widths, strict=True)) + "  REASONS"]
    for row in found:
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        )
    return "\n".join(lines)
