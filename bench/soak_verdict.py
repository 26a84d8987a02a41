"""The soak's judgement: per-second windows, the audit match and the verdict, on plain data.

Kept apart from the processes and the traffic so the criteria are tested on synthetic samples
(tests/unit/test_soak_verdict.py) exactly as they judge a real run:

- **memory**: the mean of the per-second samples (RSS and PSS summed over the sidecar's whole
  process tree) in the first *window* after warm-up, against the mean in the run's last
  window; growth above ``max_memory_growth`` (5%) of either fails. The window is 60 s, or half
  of what follows the warm-up when the run is shorter, so the two never overlap.
- **p99 drift**: p99 over every call due in the last window, against p99 over the calls due in
  the first window after warm-up *and* over the calls due in the run's first window (cold
  start included); above ``max_p99_drift`` (2x) of either fails.
- **errors**: any call without the outcome the mix expects (or not made) fails.
- **audit**: every call that returned an id is matched to exactly one audit record (a call
  record by decision id; a task record by RPC and task id; an approval record by approval id);
  none missing, none duplicated, and ``audit verify`` of the chain intact.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AuditMatch",
    "Criteria",
    "MemorySample",
    "Verdict",
    "Window",
    "judge",
    "match_audit",
    "percentile",
    "read_audit",
    "seconds",
    "table",
]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class MemorySample:
    """The sidecar's process tree at one instant (seconds since the run's start)."""

    at_s: float
    rss_mb: float
    pss_mb: float
    processes: int
    cpu_s: float = 0.0  # user + system CPU time of the tree so far (its live processes)


@dataclass(frozen=True)
class CallSample:
    """What the verdict needs of one call: when it was due, its latency, whether it failed."""

    scheduled_s: float
    latency_ms: float
    ok: bool


@dataclass(frozen=True)
class Window:
    """One second (or any span) of the run: calls due in it and memory sampled in it."""

    start_s: float
    end_s: float
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_mb: float
    pss_mb: float


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else math.nan


def window(
    calls: Sequence[CallSample], memory: Sequence[MemorySample], start_s: float, end_s: float
) -> Window:
    """The calls due in ``[start_s, end_s)`` and the memory sampled in it."""
    inside = [c for c in calls if start_s <= c.scheduled_s < end_s]
    latencies = [c.latency_ms for c in inside if c.ok]
    sampled = [m for m in memory if start_s <= m.at_s < end_s]
    return Window(
        start_s,
        end_s,
        len(inside),
        sum(1 for c in inside if not c.ok),
        percentile(latencies, 50),
        percentile(latencies, 99),
        _mean(m.rss_mb for m in sampled),
        _mean(m.pss_mb for m in sampled),
    )


def seconds(
    calls: Sequence[CallSample], memory: Sequence[MemorySample], duration_s: float
) -> list[Window]:
    """One window per second of the run (the plot's and the CSV's rows)."""
    return [window(calls, memory, s, s + 1) for s in range(math.ceil(duration_s))]


@dataclass(frozen=True)
class AuditMatch:
    """Calls against audit records: each call's key must name exactly one record."""

    matched: int
    missing: list[str]  # keys of calls with no record
    duplicated: list[str]  # keys with more than one record
    without_id: int  # calls that returned nothing to match (they failed: counted as errors)
    verify_ok: bool
    verify_output: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and self.verify_ok


def _record_keys(record: dict[str, Any]) -> list[str]:
    kind = record.get("type")
    if kind == "call" and record.get("decision_id"):
        return [f"call:{record['decision_id']}"]
    if kind == "task" and isinstance(record.get("task"), dict):
        return [f"task:{record.get('rpc')}:{record['task'].get('id')}"]
    if kind == "approval" and record.get("event") == "approved":
        return [f"approval:{record.get('approval_id')}"]
    return []  # intents (a relayed call's write-ahead line), checkpoints, other events


def read_audit(files: Iterable[Path]) -> Counter[str]:
    """How many records name each key, over every segment of the log."""
    found: Counter[str] = Counter()
    for path in files:
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    found.update(_record_keys(json.loads(line)))
    return found


def match_audit(
    keys: Sequence[tuple[str, str] | None],
    records: Counter[str],
    verify_ok: bool,
    verify_output: str = "",
) -> AuditMatch:
    """Match every call's key (``None``: the call returned no id) to the records."""
    wanted = [":".join(k) for k in keys if k is not None and k[1]]
    missing = [k for k in wanted if records[k] == 0]
    duplicated = sorted({k for k in wanted if records[k] > 1})
    seen = Counter(wanted)
    duplicated += sorted(k for k, n in seen.items() if n > 1 and k not in duplicated)
    return AuditMatch(
        matched=len(wanted) - len(missing),
        missing=missing,
        duplicated=duplicated,
        without_id=len(keys) - len(wanted),
        verify_ok=verify_ok,
        verify_output=verify_output,
    )


@dataclass(frozen=True)
class Criteria:
    """The pass marks (issue 26 item 4); not to be loosened to make a run pass."""

    warmup_s: float = 60.0
    window_s: float = 60.0
    max_memory_growth: float = 0.05
    max_p99_drift: float = 2.0


@dataclass
class Verdict:
    """The figures the criteria were judged on, and every failure, said with its numbers."""

    duration_s: float
    window_s: float
    calls: int
    errors: int
    error_kinds: Counter[str]
    rss_first_mb: float
    rss_last_mb: float
    pss_first_mb: float
    pss_last_mb: float
    p99_run_first_ms: float
    p99_first_ms: float
    p99_last_ms: float
    p50_first_ms: float
    p50_last_ms: float
    audit: AuditMatch
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _growth(first: float, last: float) -> float:
    return (last - first) / first if first > 0 else math.inf


def judge(
    calls: Sequence[CallSample],
    memory: Sequence[MemorySample],
    audit: AuditMatch,
    duration_s: float,
    criteria: Criteria | None = None,
    error_kinds: Counter[str] | None = None,
) -> Verdict:
    """Apply the criteria (module docstring) to a run's calls, samples and audit match."""
    c = criteria or Criteria()
    after = max(0.0, duration_s - c.warmup_s)
    span = min(c.window_s, after / 2) if after > 0 else 0.0
    first = window(calls, memory, c.warmup_s, c.warmup_s + span)
    last = window(calls, memory, duration_s - span, duration_s)  # not the drain after it
    run_first = window(calls, memory, 0.0, span)
    errors = sum(1 for call in calls if not call.ok)
    verdict = Verdict(
        duration_s=duration_s,
        window_s=span,
        calls=len(calls),
        errors=errors,
        error_kinds=error_kinds or Counter(),
        rss_first_mb=first.rss_mb,
        rss_last_mb=last.rss_mb,
        pss_first_mb=first.pss_mb,
        pss_last_mb=last.pss_mb,
        p99_run_first_ms=run_first.p99_ms,
        p99_first_ms=first.p99_ms,
        p99_last_ms=last.p99_ms,
        p50_first_ms=first.p50_ms,
        p50_last_ms=last.p50_ms,
        audit=audit,
    )
    fail = verdict.failures.append
    if span <= 0 or first.calls == 0 or last.calls == 0:
        fail(f"too short to judge: {duration_s:.0f} s with a {c.warmup_s:.0f} s warm-up")
    for name, a, b in (
        ("RSS", first.rss_mb, last.rss_mb),
        ("PSS", first.pss_mb, last.pss_mb),
    ):
        growth = _growth(a, b)
        if math.isnan(a) or math.isnan(b):
            fail(f"memory: no {name} samples in the first or the last {span:.0f} s")
        elif growth > c.max_memory_growth:
            fail(
                f"memory: {name} grew {growth:+.1%} after warm-up (mean {a:.1f} MB over the first "
                f"{span:.0f} s after it, {b:.1f} MB over the last {span:.0f} s; limit "
                f"{c.max_memory_growth:+.0%})"
            )
    for name, ref in (("the first window after warm-up", first), ("the run's first", run_first)):
        ratio = last.p99_ms / ref.p99_ms if ref.p99_ms > 0 else math.inf
        if math.isnan(ratio) or ratio > c.max_p99_drift:
            fail(
                f"p99 drift: last {span:.0f} s p99 {last.p99_ms:.2f} ms is {ratio:.2f}x "
                f"{name} {span:.0f} s ({ref.p99_ms:.2f} ms; limit {c.max_p99_drift:.0f}x)"
            )
    if errors:
        kinds = ", ".join(f"{k} x{n}" for k, n in (error_kinds or Counter()).most_common(5))
        fail(f"errors: {errors} of {len(calls)} calls" + (f" ({kinds})" if kinds else ""))
    if audit.missing:
        fail(f"audit: {len(audit.missing)} calls without their record (e.g. {audit.missing[0]})")
    if audit.duplicated:
        fail(f"audit: {len(audit.duplicated)} keys with more than one record")
    if not audit.verify_ok:
        fail("audit: `audit verify` found the chain not intact")
    return verdict


def table(v: Verdict, by_kind: dict[str, tuple[int, int, float, float, float]], note: str) -> str:
    """The run as a small markdown table (also what stdout shows)."""
    mark = "PASS" if v.passed else "FAIL"
    w = f"{v.window_s:.0f} s"
    rows = [
        f"## soak: {mark}",
        "",
        note,
        "",
        "| measure | first window after warm-up | last window | change | limit |",
        "|---|---|---|---|---|",
        f"| RSS, whole process tree (mean, MB; {w}) | {v.rss_first_mb:.1f} | "
        f"{v.rss_last_mb:.1f} | {_growth(v.rss_first_mb, v.rss_last_mb):+.1%} | +5% |",
        f"| PSS, whole process tree (mean, MB; {w}) | {v.pss_first_mb:.1f} | "
        f"{v.pss_last_mb:.1f} | {_growth(v.pss_first_mb, v.pss_last_mb):+.1%} | +5% |",
        f"| p50 ms ({w}) | {v.p50_first_ms:.2f} | {v.p50_last_ms:.2f} | | |",
        f"| p99 ms ({w}) | {v.p99_first_ms:.2f} | {v.p99_last_ms:.2f} | "
        f"{v.p99_last_ms / v.p99_first_ms if v.p99_first_ms else math.inf:.2f}x | 2x |",
        f"| p99 ms, run's first {w} (cold) | {v.p99_run_first_ms:.2f} | | "
        f"{v.p99_last_ms / v.p99_run_first_ms if v.p99_run_first_ms else math.inf:.2f}x | 2x |",
        f"| calls / errors | {v.calls} | {v.errors} errors | | 0 |",
        f"| audit: calls matched to one record | {v.audit.matched} | "
        f"{len(v.audit.missing)} missing, {len(v.audit.duplicated)} duplicated | | 0 |",
        f"| audit verify | {'intact' if v.audit.verify_ok else 'NOT intact'} | | | intact |",
        "",
        "| kind | calls | errors | p50 ms | p99 ms | agent's start lag p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for kind, (n, errors, p50, p99, lag) in sorted(by_kind.items()):
        rows.append(f"| {kind} | {n} | {errors} | {p50:.2f} | {p99:.2f} | {lag:.2f} |")
    if v.failures:
        rows += ["", "Failed:", *(f"- {f}" for f in v.failures)]
    return "\n".join(rows) + "\n"
