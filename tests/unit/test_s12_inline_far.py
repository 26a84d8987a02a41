"""Session 12, policy engine limits (sidecar/policy/embedded.py, sidecar/policy/_pool.py).

- Item 1: a rarely-but-very slow policy leaves the event loop. One inline evaluation over
  ``FAR_OVER`` x ``inline_max_ms`` of CPU moves the revision to threads at once; an outlier a
  little over the budget still does not (tests/unit/test_issue26_inline_policy.py).
- Item 2: a stuck interpreter is replaced. With ``workers: 1`` and ``inline_max_ms: 0`` an
  evaluation past its timeout held the only interpreter and every next call failed closed
  until it ended; now the next calls get a fresh interpreter compiled off the loop, at most
  ``SPARE_MAX`` beyond the revision's size, and the stuck one is dropped when it ends.

Inputs are chosen by their CPU cost measured on this machine (tests/support/policy_cost.py);
no duration is asserted, and waits are bounded polls on the engine's state.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path

import pytest

from sidecar.policy import DecisionError, EmbeddedEngine
from sidecar.policy._pool import SPARE_MAX
from sidecar.policy.embedded import FAR_OVER, SLOW_TO_DEMOTE, WINDOW
from tests.support.policy_cost import expected, input_costing, write_counting_policy
from tests.support.settle import poll

BUDGET_MS = 5.0
FAST = {"n": 1}  # answered 1 (1..1)


# A little over the budget (sqrt(FAR_OVER) x, ~16 ms: an outlier like the 24.4 ms one seen),
# and far over it (3 x FAR_OVER x budget, ~150 ms: the "one in 8 costs 150 ms" of the known
# limit, under the 250 ms default timeout). Each is sqrt(10) or 3x away from a threshold.
# Calibrated on first use, inside a test (never at import: tests/support/policy_cost.py).
def _outlier() -> dict[str, int]:
    return input_costing(BUDGET_MS * FAR_OVER**0.5)


def _far() -> dict[str, int]:
    return input_costing(3 * FAR_OVER * BUDGET_MS)


BOUND_S = 120.0  # generous: 2 cores shared with other test runs


def _engine(tmp_path: Path, **kwargs: object) -> EmbeddedEngine:
    root = write_counting_policy(tmp_path / "policy")
    options: dict = {"inline_max_ms": BUDGET_MS, "memo_size": 0} | kwargs
    return EmbeddedEngine.from_dir(root, "data.p.out", **options)


async def _values(engine: EmbeddedEngine, inputs: list[dict], timeout_s: float = 600.0) -> list:
    return [(await engine.evaluate(i, timeout_s=timeout_s)).value for i in inputs]


# --- item 1: far over budget -------------------------------------------------------------------


def test_s12_item1_one_evaluation_far_over_budget_moves_at_once(tmp_path):
    """Before: 1 over budget of 1 is under SLOW_TO_DEMOTE and not late: it stayed inline."""
    engine, far = _engine(tmp_path), _far()
    try:
        assert engine.inline
        assert asyncio.run(_values(engine, [far])) == [expected(far)]  # answered, not refused
        assert not engine.inline
        assert asyncio.run(_values(engine, [FAST])) == [1]  # and decides in threads
    finally:
        engine.close()


def test_s12_item1_rarely_but_very_slow_policy_leaves_the_loop(tmp_path):
    """The known limit: one evaluation in 8 far over budget, under its timeout, is 2 of 16 and
    never moved, so each held the loop. Now the first one moves the revision, and the next
    far ones are evaluated in threads (the loop only waits for them)."""
    engine, far = _engine(tmp_path), _far()
    pattern = ([FAST] * 7 + [far]) * 2
    seen_inline: list[bool] = []

    async def run() -> list:
        out = []
        for doc in pattern:
            seen_inline.append(engine.inline)
            out.append((await engine.evaluate(doc, timeout_s=600)).value)
        return out

    try:
        assert asyncio.run(run()) == [1] * 7 + [expected(far)] + [1] * 7 + [expected(far)]
        assert seen_inline == [True] * 8 + [False] * 8  # moved by the first far evaluation
        assert SLOW_TO_DEMOTE > 2 and len(pattern) == WINDOW  # the old rule never fired
    finally:
        engine.close()


def test_s12_item1_outliers_a_little_over_budget_keep_the_revision_inline(tmp_path):
    """As many outliers as the window tolerates, each sqrt(FAR_OVER) x the budget: inline."""
    engine, outlier = _engine(tmp_path), _outlier()
    try:
        values = asyncio.run(_values(engine, [outlier, FAST] * (SLOW_TO_DEMOTE - 1)))
        assert values == [expected(outlier), 1] * (SLOW_TO_DEMOTE - 1)
        assert engine.inline
    finally:
        engine.close()


def test_s12_item1_far_is_relative_to_the_configured_budget(tmp_path):
    """The same evaluation is an outlier for a budget FAR_OVER x larger: it stays inline."""
    engine = _engine(tmp_path, inline_max_ms=BUDGET_MS * FAR_OVER)
    try:
        asyncio.run(_values(engine, [_far()]))
        assert engine.inline
    finally:
        engine.close()


def test_s12_item1_far_and_late_is_still_refused(tmp_path):
    """Far over budget and past the deadline: refused (fail closed) and moved, as before."""
    engine = _engine(tmp_path)
    try:
        with pytest.raises(DecisionError) as refused:
            asyncio.run(_values(engine, [_far()], timeout_s=0.001))
        assert refused.value.code == "policy_timeout"
        assert not engine.inline
    finally:
        engine.close()


# --- item 2: a stuck interpreter is replaced ---------------------------------------------------


# Six times its call's timeout: long enough for that call to start evaluating before it times
# out on a busy machine (a call that times out while waiting leaves nothing stuck), and for the
# calls after it to be answered while it still runs.
def _stuck() -> dict[str, int]:
    return input_costing(3000)


STUCK_TIMEOUT_S = 0.5
# A fast call costs well under a ms, plus the replacement's compile (~4 ms of this policy; the
# shipped one's ~50) after STUCK_GRACE_S: 1 s is a wide margin, and far shorter than what is
# left of the stuck evaluation.
FAST_TIMEOUT_S = 1.0


def _threaded(tmp_path: Path) -> EmbeddedEngine:
    engine = _engine(tmp_path, workers=1, inline_max_ms=0)
    assert not engine.inline and engine.interpreters == 1
    return engine


def test_s12_item2_after_a_call_times_out_fast_calls_are_answered(tmp_path):
    """workers: 1 + inline_max_ms: 0. Before: the one interpreter stayed with the stuck
    evaluation and every fast call failed closed (policy_timeout) until it ended."""
    engine = _threaded(tmp_path)

    async def scenario() -> tuple[collections.Counter, int, int]:
        with pytest.raises(DecisionError) as refused:
            await engine.evaluate(_stuck(), timeout_s=STUCK_TIMEOUT_S)
        assert refused.value.code == "policy_timeout"
        outcomes: collections.Counter = collections.Counter()
        for _ in range(20):
            try:
                result = await engine.evaluate(FAST, timeout_s=FAST_TIMEOUT_S)
                outcomes[result.value] += 1
            except DecisionError as exc:
                outcomes[exc.code] += 1
        return outcomes, engine.stuck, engine.interpreters

    try:
        outcomes, stuck, interpreters = asyncio.run(scenario())
        assert outcomes == {1: 20}  # before: policy_timeout while the stuck one ran
        assert stuck == 1  # every fast answer above came while it still ran
        assert interpreters == 2  # the stuck one and its replacement
        poll(lambda: engine.stuck == 0, BOUND_S, "the stuck evaluation to end")
        poll(lambda: engine.interpreters == 1, BOUND_S, "the stuck interpreter dropped")
        assert engine._state.pool.qsize() == 1  # the replacement is the one left, free
        assert asyncio.run(_values(engine, [FAST, {"n": 15}])) == [1, 15]
    finally:
        engine.close()


def test_s12_item2_many_timeouts_are_bounded_and_leave_nothing_behind(tmp_path):
    """Twelve slow calls at once, each timing out while it runs or waits: at most SPARE_MAX
    interpreters beyond the one, calls beyond them fail closed as before, no engine thread
    waits for good, and once the stuck ones end the revision has its one interpreter again."""
    engine = _threaded(tmp_path)
    slow = input_costing(300)
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], engine.interpreters)
            stop.wait(0.001)

    watcher = threading.Thread(target=watch, name="test-watch", daemon=True)
    watcher.start()

    async def scenario() -> collections.Counter:
        outcomes: collections.Counter = collections.Counter()
        for _ in range(4):  # rounds: each timeout can free a spare slot for the next
            results = await asyncio.gather(
                *(engine.evaluate(slow, timeout_s=0.05) for _ in range(3)),
                return_exceptions=True,
            )
            for r in results:
                outcomes[r.code if isinstance(r, DecisionError) else "answered"] += 1
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes["policy_timeout"] >= 1 and sum(outcomes.values()) == 12
        assert set(outcomes) <= {"policy_timeout", "answered"}
        assert engine.interpreters <= 1 + SPARE_MAX
        poll(lambda: engine.stuck == 0, BOUND_S, "every stuck evaluation to end")
        poll(lambda: engine.interpreters == 1, BOUND_S, "back to one interpreter")
        assert engine._state.pool.qsize() == 1
        rego_threads = [t for t in threading.enumerate() if t.name.startswith("rego_")]
        assert len(rego_threads) <= 2 + SPARE_MAX  # the executor's bound
        assert asyncio.run(_values(engine, [FAST])) == [1]
    finally:
        stop.set()
        watcher.join(BOUND_S)
        engine.close()
    assert peak[0] <= 1 + SPARE_MAX


def test_s12_item2_beyond_the_spares_calls_fail_closed(tmp_path):
    """1 + SPARE_MAX stuck evaluations hold every interpreter allowed: the next call fails
    closed with policy_timeout (no further interpreter), and is answered once one ends."""
    engine = _threaded(tmp_path)

    async def scenario() -> str:
        for held in range(1, SPARE_MAX + 2):
            with pytest.raises(DecisionError):
                await engine.evaluate(_stuck(), timeout_s=STUCK_TIMEOUT_S)
            assert engine.stuck == held
            # the replacement (if one is due) free before the next one: a bounded wait
            deadline = asyncio.get_running_loop().time() + BOUND_S
            while not engine._state.pool.qsize() and held <= SPARE_MAX:
                assert asyncio.get_running_loop().time() < deadline, "no replacement"
                await asyncio.sleep(0.001)
        assert engine.stuck == 1 + SPARE_MAX
        assert engine.interpreters == 1 + SPARE_MAX
        with pytest.raises(DecisionError) as refused:
            await engine.evaluate(FAST, timeout_s=0.2)
        return refused.value.code

    try:
        assert asyncio.run(scenario()) == "policy_timeout"
        assert engine.interpreters == 1 + SPARE_MAX  # nothing more was compiled
        poll(lambda: engine.stuck == 0, BOUND_S, "every stuck evaluation to end")
        poll(lambda: engine.interpreters == 1, BOUND_S, "back to one interpreter")
        assert asyncio.run(_values(engine, [FAST])) == [1]
    finally:
        engine.close()


def test_s12_item2_a_call_that_timed_out_waiting_is_never_evaluated(tmp_path):
    """A call that timed out while every interpreter was held used to leave its engine thread
    waiting for one, which then evaluated an input nobody waited for (and held the interpreter
    meanwhile). Now the thread gives up at the deadline: the memo, which remembers every input
    an engine thread evaluates, never sees it."""
    engine = _engine(tmp_path, workers=1, inline_max_ms=0, memo_size=64)
    holder, gave_up, after = input_costing(1000), {"n": 15}, {"n": 8}

    async def scenario() -> tuple[str, list]:
        held = asyncio.ensure_future(engine.evaluate(holder, timeout_s=BOUND_S))
        deadline = asyncio.get_running_loop().time() + BOUND_S
        while engine._state.pool.qsize():  # until the holder has the only interpreter
            assert asyncio.get_running_loop().time() < deadline, "the holder never started"
            await asyncio.sleep(0.001)
        with pytest.raises(DecisionError) as refused:
            await engine.evaluate(gave_up, timeout_s=0.05)
        assert engine.stuck == 0  # it only waited: nothing to replace
        await held
        return refused.value.code, await _values(engine, [after])

    try:
        code, values = asyncio.run(scenario())
        assert code == "policy_timeout"
        assert values == [8]
        memo = engine.memo
        assert memo is not None
        poll(lambda: engine._state.pool.qsize() == 1, BOUND_S, "the interpreter back")
        assert memo.get(memo.key(gave_up))[0] is False  # never evaluated
        assert memo.get(memo.key(holder))[0] is True and memo.get(memo.key(after))[0] is True
        assert engine.interpreters == 1
    finally:
        engine.close()
