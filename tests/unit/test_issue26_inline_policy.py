"""Issue 26 item 2, the cause of the pod-mode cliff: one slow inline evaluation (an outlier: a
garbage collection, page faults) used to move the policy to the threads for good, where at
load every decision waits for the GIL. Now only a policy slow *repeatedly*, or one that blocked
the loop past its timeout, moves; the engine still fails closed on a late answer.

The slow evaluation is a policy that counts to ``input.n``, 1 costs microseconds. "An outlier"
(``SLOW``) is an input calibrated on this machine to cost sqrt(FAR_OVER) x the 5 ms budget (~16
ms, like the 24.4 ms outlier seen): over the budget, and as far under ``FAR_OVER`` x the budget,
which moves a revision at once (session 12: tests/unit/test_s12_inline_far.py). It used to be
n = 100,000, ~400 ms here, far over both. No duration is asserted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.policy import DecisionError, EmbeddedEngine
from sidecar.policy.embedded import FAR_OVER, SLOW_TO_DEMOTE, WINDOW
from tests.support.policy_cost import COUNT_RULE as COUNT
from tests.support.policy_cost import expected, input_costing

BUDGET_MS = 5
FAST = {"n": 1}  # answered 1 (1..1: tests/support/policy_cost.py)


def _slow() -> dict[str, int]:
    """The outlier, calibrated on first use inside a test (never at import)."""
    return input_costing(BUDGET_MS * FAR_OVER**0.5)


def _engine(tmp_path: Path) -> EmbeddedEngine:
    directory = tmp_path / "policy" / "p"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{COUNT}\n")
    # Nothing remembered (memo_size=0): these tests repeat one slow input, which the decision
    # memo would answer without evaluating (tests/unit/test_item3_decision_memo.py).
    return EmbeddedEngine.from_dir(
        tmp_path / "policy", "data.p.out", inline_max_ms=BUDGET_MS, memo_size=0
    )


def _run(engine: EmbeddedEngine, inputs: list[dict], timeout_s: float = 600.0) -> list:
    async def run() -> list:
        return [(await engine.evaluate(i, timeout_s=timeout_s)).value for i in inputs]

    return asyncio.run(run())


def test_item2_one_slow_inline_evaluation_keeps_policy_inline(tmp_path):
    engine = _engine(tmp_path)
    try:
        assert engine.inline
        assert _run(engine, [_slow(), FAST, FAST]) == [expected(_slow()), 1, 1]  # answered, correct
        assert engine.inline  # an outlier alone does not move the revision
    finally:
        engine.close()


def test_item2_a_repeatedly_slow_policy_moves_to_threads(tmp_path):
    engine = _engine(tmp_path)
    try:
        _run(engine, [_slow()] * (SLOW_TO_DEMOTE - 1))
        assert engine.inline
        _run(engine, [_slow()])
        assert not engine.inline
        assert _run(engine, [FAST]) == [1]  # and still decides, in threads
    finally:
        engine.close()


def test_item2_slow_evaluations_out_of_the_window_are_forgotten(tmp_path):
    engine = _engine(tmp_path)
    try:
        _run(engine, [_slow()] * (SLOW_TO_DEMOTE - 1) + [FAST] * WINDOW)
        _run(engine, [_slow()] * (SLOW_TO_DEMOTE - 1))
        assert engine.inline
    finally:
        engine.close()


def test_item2_a_slow_evaluation_past_its_timeout_still_fails_closed_and_moves(tmp_path):
    """The safety case is unchanged: blocked past the deadline, refused, and in threads at
    once (where the next wait is bounded)."""
    engine = _engine(tmp_path)
    try:
        with pytest.raises(DecisionError) as refused:
            _run(engine, [_slow()], timeout_s=0.001)
        assert refused.value.code == "policy_timeout"
        assert not engine.inline
    finally:
        engine.close()


def test_item2_a_new_revision_starts_inline_with_a_clean_window(tmp_path):
    engine = _engine(tmp_path)
    try:
        _run(engine, [_slow()] * SLOW_TO_DEMOTE)
        assert not engine.inline
        policy = tmp_path / "policy" / "p" / "p.rego"
        policy.write_text(policy.read_text() + "\nother := 1\n")
        assert engine.reload()
        assert engine.inline
        _run(engine, [_slow()])
        assert engine.inline
    finally:
        engine.close()


def test_item2_a_remembered_decision_needs_no_thread_nor_interpreter(tmp_path):
    """In threads (``inline_max_ms: 0``, one interpreter), the memo is asked on the event loop:
    a remembered answer comes back while a slow evaluation holds the only interpreter (before,
    it queued for the interpreter behind it), and no engine thread is woken for it. A missed
    key is remembered by the thread that evaluates it, as before."""
    directory = tmp_path / "policy" / "p"
    directory.mkdir(parents=True)
    (directory / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{COUNT}\n")
    engine = EmbeddedEngine.from_dir(tmp_path / "policy", "data.p.out", workers=1)
    assert not engine.inline and engine.memo is not None
    remembered = {"n": 10}
    very_slow = input_costing(700)  # nothing below waits for it to end

    async def run() -> None:
        assert (await engine.evaluate(remembered, timeout_s=600)).value == 10  # missed, kept
        assert engine.memo.misses == 1 and len(engine.memo) == 1
        slow = asyncio.create_task(engine.evaluate(very_slow, timeout_s=600))
        for _ in range(10_000_000):  # loop turns until the slow one holds the only interpreter
            if not engine._state.pool.qsize():
                break
            await asyncio.sleep(0)
        assert (await engine.evaluate(remembered, timeout_s=600)).value == 10
        assert not slow.done()  # answered from the memo while the interpreter is held
        assert engine.memo.hits == 1
        slow.cancel()

    try:
        asyncio.run(run())
    finally:
        engine.close()
