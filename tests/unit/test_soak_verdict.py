"""Issue 26 item 4: the soak's verdict (bench/soak_verdict.py) on synthetic samples: memory
growth after warm-up, p99 drift, any error, any call without exactly one audit record."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.soak_verdict import (  # noqa: E402
    AuditMatch,
    CallSample,
    Criteria,
    MemorySample,
    judge,
    match_audit,
    percentile,
    read_audit,
)

CRITERIA = Criteria(warmup_s=60, window_s=60)
DURATION = 600.0
CLEAN = AuditMatch(matched=1, missing=[], duplicated=[], without_id=0, verify_ok=True)


def memory(level=lambda t: 100.0) -> list[MemorySample]:
    return [MemorySample(t, level(t) * 1.5, level(t), 3) for t in range(int(DURATION))]


def calls(latency=lambda t: 2.0, per_second: int = 100) -> list[CallSample]:
    out = []
    for t in range(int(DURATION)):
        for i in range(per_second):
            at = t + i / per_second
            # 2 calls in 100 are the tail: the nearest-rank p99 is latency(at) x 3
            slow = i >= per_second - 2
            out.append(CallSample(at, latency(at) * (3 if slow else 1), True))
    return out


def test_item4_a_steady_run_passes():
    verdict = judge(calls(), memory(), CLEAN, DURATION, CRITERIA)
    assert verdict.passed, verdict.failures
    assert verdict.window_s == 60
    assert verdict.pss_first_mb == verdict.pss_last_mb == 100.0


def test_item4_memory_growth_above_5_percent_after_warm_up_fails():
    # flat through the first minute after warm-up, then a slow leak to +6% by the end
    leak = lambda t: 100.0 if t < 120 else 100.0 + 6.0 * (t - 120) / (DURATION - 120)  # noqa: E731
    verdict = judge(calls(), memory(leak), CLEAN, DURATION, CRITERIA)
    assert not verdict.passed
    assert any(f.startswith("memory: PSS grew") for f in verdict.failures), verdict.failures
    assert any(f.startswith("memory: RSS grew") for f in verdict.failures)
    assert 0.05 < verdict.pss_last_mb / verdict.pss_first_mb - 1 < 0.06


def test_item4_memory_growth_within_5_percent_or_during_warm_up_passes():
    # doubling during the warm-up is not judged; +4% after it is within the limit
    grow = lambda t: 50.0 + t if t < 60 else 110.0 + 4.4 * (t - 60) / (DURATION - 60)  # noqa: E731
    verdict = judge(calls(), memory(grow), CLEAN, DURATION, CRITERIA)
    assert verdict.passed, verdict.failures


def test_item4_only_one_of_rss_and_pss_growing_still_fails():
    samples = [
        MemorySample(s.at_s, s.rss_mb * (1.2 if s.at_s > 500 else 1), s.pss_mb, 3) for s in memory()
    ]
    verdict = judge(calls(), samples, CLEAN, DURATION, CRITERIA)
    assert [f.split(" grew")[0] for f in verdict.failures] == ["memory: RSS"]


def test_item4_p99_drift_above_2x_between_first_and_last_minute_fails():
    drift = lambda t: 2.0 if t < DURATION - 60 else 4.2  # noqa: E731
    verdict = judge(calls(drift), memory(), CLEAN, DURATION, CRITERIA)
    assert not verdict.passed
    assert verdict.p99_last_ms == pytest.approx(12.6)
    assert verdict.p99_first_ms == pytest.approx(6.0)
    assert any(f.startswith("p99 drift") for f in verdict.failures), verdict.failures


def test_item4_p99_drift_of_under_2x_passes():
    drift = lambda t: 2.0 if t < DURATION - 60 else 3.9  # noqa: E731
    verdict = judge(calls(drift), memory(), CLEAN, DURATION, CRITERIA)
    assert verdict.passed, verdict.failures


def test_item4_the_cold_first_minute_is_a_reference_too():
    # a slow second minute must not hide a last minute 2.5x the run's first
    latency = lambda t: 2.0 if t < 60 else (5.0 if t < 120 else 4.0 if t < 540 else 5.0)  # noqa: E731
    verdict = judge(calls(latency), memory(), CLEAN, DURATION, CRITERIA)
    assert [f for f in verdict.failures if "run's first" in f], verdict.failures
    assert not [f for f in verdict.failures if "after warm-up" in f]


def test_item4_a_single_error_fails():
    found = calls()
    found[len(found) // 2] = CallSample(300.0, 2.0, False)
    kinds = Counter({"tool: UNAVAILABLE upstream_unavailable": 1})
    verdict = judge(found, memory(), CLEAN, DURATION, CRITERIA, kinds)
    assert verdict.errors == 1
    assert verdict.failures == [
        f"errors: 1 of {len(found)} calls (tool: UNAVAILABLE upstream_unavailable x1)"
    ]


def test_item4_a_call_without_its_audit_record_fails():
    records = Counter({"call:01A": 1, "task:StartTask:t-1": 1, "approval:ap-1": 1})
    keys = [("call", "01A"), ("task", "StartTask:t-1"), ("approval", "ap-1"), ("call", "01B")]
    audit = match_audit(keys, records, verify_ok=True)
    assert audit.missing == ["call:01B"] and audit.matched == 3 and not audit.ok
    verdict = judge(calls(), memory(), audit, DURATION, CRITERIA)
    assert verdict.failures == ["audit: 1 calls without their record (e.g. call:01B)"]


def test_item4_two_records_for_one_call_or_a_broken_chain_fails():
    doubled = match_audit([("call", "01A")], Counter({"call:01A": 2}), verify_ok=True)
    assert doubled.duplicated == ["call:01A"] and not doubled.ok
    broken = match_audit([("call", "01A")], Counter({"call:01A": 1}), verify_ok=False)
    assert not broken.ok
    assert (
        "audit: 1 keys with more than one record"
        in judge(calls(), memory(), doubled, DURATION, CRITERIA).failures
    )
    assert (
        "audit: `audit verify` found the chain not intact"
        in judge(calls(), memory(), broken, DURATION, CRITERIA).failures
    )


def test_item4_a_call_that_returned_no_id_is_counted_not_matched():
    audit = match_audit([None, ("call", ""), ("call", "01A")], Counter({"call:01A": 1}), True)
    assert audit.without_id == 2 and audit.matched == 1 and audit.ok


@pytest.mark.parametrize(
    ("duration", "warmup"), [(60.0, 60.0), (30.0, 60.0), (0.5, 0.0)], ids=["all", "over", "tiny"]
)
def test_item4_a_run_too_short_to_judge_never_passes(duration, warmup):
    short = [c for c in calls() if c.scheduled_s < duration]
    samples = [m for m in memory() if m.at_s < duration]
    verdict = judge(short, samples, CLEAN, duration, Criteria(warmup_s=warmup))
    assert not verdict.passed


def test_item4_no_memory_samples_is_a_failure_not_a_pass():
    verdict = judge(calls(), [], CLEAN, DURATION, CRITERIA)
    assert any(f.startswith("memory: no RSS samples") for f in verdict.failures), verdict.failures


def test_item4_short_runs_compare_halves_that_do_not_overlap():
    verdict = judge(calls(), memory(), CLEAN, 30.0, Criteria(warmup_s=10, window_s=60))
    assert verdict.window_s == 10.0


def test_item4_the_audit_reader_counts_calls_tasks_and_approvals_only(tmp_path):
    lines = [
        {"type": "intent", "decision_id": "01A"},  # a relayed call's write-ahead line
        {"type": "call", "decision_id": "01A"},
        {"type": "task", "rpc": "StartTask", "task": {"id": "t-1"}, "decision_id": "01T"},
        {"type": "task", "rpc": "EndTask", "task": {"id": "t-1"}, "decision_id": "01U"},
        {"type": "approval", "event": "approved", "approval_id": "ap-1", "decision_id": "01S"},
        {"type": "approval", "event": "expired", "approval_id": "ap-2", "decision_id": "01X"},
        {"type": "checkpoint", "seq": 7},
    ]
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    assert read_audit([log]) == Counter(
        {"call:01A": 1, "task:StartTask:t-1": 1, "task:EndTask:t-1": 1, "approval:ap-1": 1}
    )


def test_item4_percentile_is_nearest_rank_and_nan_when_empty():
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 101)), 50) == 50
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 99))


def test_item4_samples_after_the_last_call_was_due_are_not_judged():
    # the drain after the traffic (waiting for the last answers) is not the last minute
    drained = [*memory(), *(MemorySample(DURATION + s, 900.0, 600.0, 3) for s in range(30))]
    verdict = judge(calls(), drained, CLEAN, DURATION, CRITERIA)
    assert verdict.passed, verdict.failures
