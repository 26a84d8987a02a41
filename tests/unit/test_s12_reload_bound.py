"""The review of session 12, R4: reloads while evaluations are stuck grew without bound.

Each revision had its own executor, never shut down when replaced, and a stuck evaluation could
not be interrupted: 8 reloads at ``workers: 2`` left 32 threads, 16 stuck evaluations, 34
interpreters and 8.4 GB (/tmp/review2_s12/reload_growth2.py). Now a replaced revision is
retired (queued evaluations cancelled: their calls fail closed; no more interpreters compiled;
free ones dropped), and at most ``RUNNING_SETS`` revisions' worth of evaluations run on engine
threads at once across all revisions: past it a call fails closed (``policy_timeout``) at once.

Evaluations are held by a gate on the interpreters (an input with ``hold``), so nothing burns
CPU, waits on a sleep or asserts a duration: waits are bounded polls on the engine's state.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path

import pytest

from sidecar.policy import DecisionError, EmbeddedEngine
from sidecar.policy import embedded as embedded_module
from sidecar.policy._pool import SPARE_MAX, InterpreterPool, Loan
from sidecar.policy._rego import CompiledQuery
from sidecar.policy.embedded import RUNNING_SETS, THREADED_MIN
from tests.support.policy_cost import write_counting_policy
from tests.support.settle import apoll, poll

BOUND_S = 120.0  # generous: 2 cores shared with other test runs
FAST = {"n": 1}  # answered 1
HELD = {"n": 2, "hold": True}  # answered 2 once the gate opens
WORKERS = 2
SET = max(THREADED_MIN, WORKERS) + SPARE_MAX  # one revision's threads


class _Gate:
    """Holds every evaluation of an input with ``hold`` (on its engine thread, interpreter
    borrowed) until the test opens it; counts those that entered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()
        real = CompiledQuery.evaluate_missed
        gate = self

        def evaluate_missed(compiled, input_doc, *args, **kwargs):
            if input_doc.get("hold"):
                with gate._lock:
                    gate.entered += 1
                assert gate.open.wait(BOUND_S), "the test never opened the gate"
            return real(compiled, input_doc, *args, **kwargs)

        monkeypatch.setattr(CompiledQuery, "evaluate_missed", evaluate_missed)


def _engine(tmp_path: Path) -> EmbeddedEngine:
    root = write_counting_policy(tmp_path / "policy")
    engine = EmbeddedEngine.from_dir(
        root, "data.p.out", workers=WORKERS, inline_max_ms=0, memo_size=0
    )
    assert not engine.inline and engine.running_limit == RUNNING_SETS * SET
    return engine


def _change_policy(tmp_path: Path, tag: int) -> None:
    policy = tmp_path / "policy" / "p" / "p.rego"
    policy.write_text(policy.read_text() + f"\nround_{tag} := {tag}\n")


def _rego_threads() -> int:
    return sum(t.name.startswith("rego") for t in threading.enumerate())


async def _until(predicate, what: str) -> None:
    """The event loop keeps running meanwhile (a replacement is reserved by a callback on it)."""
    await apoll(predicate, BOUND_S, what)


async def _outcome(engine: EmbeddedEngine, doc: dict, timeout_s: float) -> object:
    try:
        return (await engine.evaluate(doc, timeout_s=timeout_s)).value
    except DecisionError as exc:
        return exc


def _refused_busy(outcome: object) -> bool:
    return (
        isinstance(outcome, DecisionError)
        and outcome.code == "policy_timeout"
        and "refused without waiting" in str(outcome)
    )


async def _hold_until_refused(engine: EmbeddedEngine, gate: _Gate) -> int:
    """Calls that time out while their evaluation is held, until the revision has no free
    interpreter left for one or the engine refuses it; how many got stuck."""
    stuck = 0
    pool = engine._state.pool
    for _ in range(SET):
        entered = gate.entered
        outcome = await _outcome(engine, HELD, 0.05)
        assert isinstance(outcome, DecisionError) and outcome.code == "policy_timeout"
        if _refused_busy(outcome):
            break
        if gate.entered == entered:  # no interpreter free before its deadline
            break
        stuck += 1
        if stuck < SET:  # the next one needs the replacement compiled after the grace
            await _until(lambda: pool.qsize() or pool.size >= SET, "a spare")
            if not pool.qsize():
                break
    return stuck


def test_r4_reloads_with_stuck_evaluations_keep_threads_and_interpreters_bounded(
    tmp_path, monkeypatch
):
    """The reviewer's probe, held by a gate: 8 rounds of "every interpreter stuck, then a
    reload". Before: a set of threads per round (32 after 8). Now the engine's running
    evaluations stop at RUNNING_SETS sets, then calls fail closed at once; the active revision
    answers whenever the bound leaves it room, and everything ends once the gate opens."""
    gate = _Gate(monkeypatch)
    others = _rego_threads()
    engine = _engine(tmp_path)
    pools: list[InterpreterPool] = []
    try:

        async def rounds() -> None:
            for tag in range(1, 9):
                pools.append(engine._state.pool)
                await _hold_until_refused(engine, gate)
                assert engine.running <= engine.running_limit
                assert _rego_threads() <= others + engine.running_limit + SET
                _change_policy(tmp_path, tag)
                assert engine.reload()
                fast = await _outcome(engine, FAST, 5.0)
                if engine.running < engine.running_limit:
                    assert fast == 1, fast  # the new revision answers while there is room
                else:
                    assert _refused_busy(fast), fast
                # A replaced revision keeps at most one free interpreter, compiles none.
                for old in pools:
                    assert old.retired and old.compiling == 0
                    assert old.size - old.stuck <= 1
                assert sum(p.size for p in pools) <= engine.running_limit + len(pools)
            assert engine.running == engine.running_limit  # it filled up, and stopped there
            assert _rego_threads() <= others + engine.running_limit + SET

        asyncio.run(rounds())
        gate.open.set()
        poll(lambda: engine.running == 0, BOUND_S, "the held evaluations to end")
        assert asyncio.run(_outcome(engine, FAST, 5.0)) == 1

        def old_threads_gone() -> bool:
            gc.collect()
            return _rego_threads() <= others + SET

        poll(old_threads_gone, BOUND_S, "the replaced revisions' threads to exit")
    finally:
        gate.open.set()
        engine.close()


def test_r4_old_revisions_queued_evaluations_fail_closed_after_replacement(tmp_path, monkeypatch):
    """Two evaluations hold both interpreters (not timed out), two threads wait for one, two
    calls queue behind the threads. A reload cancels the queued two at once: they fail closed
    (before, they waited for the old revision's threads until their deadline); the new revision
    answers meanwhile; the running four end under the old revision once the gate opens."""
    gate = _Gate(monkeypatch)
    engine = _engine(tmp_path)
    old_revision = engine.revision
    try:

        async def scenario() -> None:
            holding = [asyncio.create_task(_outcome(engine, HELD, BOUND_S)) for _ in range(2)]
            await _until(lambda: gate.entered == 2, "both interpreters held")
            waiting = [asyncio.create_task(_outcome(engine, HELD, BOUND_S)) for _ in range(4)]
            await _until(lambda: engine.running == SET, "every thread of the revision busy")
            _change_policy(tmp_path, 1)
            assert engine.reload()
            queued = await asyncio.gather(*waiting[2:])
            for outcome in queued:
                assert isinstance(outcome, DecisionError) and outcome.code == "policy_timeout"
                assert "replaced" in str(outcome)
            new = await engine.evaluate(FAST, timeout_s=5.0)
            assert new.value == 1 and new.revision != old_revision
            assert engine.running == SET  # the old revision's four still run
            gate.open.set()
            assert await asyncio.gather(*holding, *waiting[:2]) == [2, 2, 2, 2]

        asyncio.run(scenario())
        poll(lambda: engine.running == 0, BOUND_S, "the old revision's evaluations to end")
    finally:
        gate.open.set()
        engine.close()


def test_r4_a_replaced_revision_compiles_no_spare(tmp_path, monkeypatch):
    """A call times out while its evaluation is held; the revision is replaced before the
    grace period's check runs. Before: the check still compiled a spare for the old revision.
    Now it compiles none (and the retired pool refuses a reservation or a larger target)."""
    gate = _Gate(monkeypatch)
    engine = _engine(tmp_path)
    checks: list[tuple] = []
    monkeypatch.setattr(embedded_module, "STUCK_GRACE_S", 0.0)
    monkeypatch.setattr(engine, "_replace_if_still_stuck", lambda *args: checks.append(args))
    old_state = engine._state
    compiles: list[int] = []
    real_compile = old_state.pool._compile_more

    def counting_compile():
        compiles.append(1)
        return real_compile()

    old_state.pool._compile_more = counting_compile
    try:

        async def scenario() -> None:
            outcome = await _outcome(engine, HELD, 0.05)
            assert isinstance(outcome, DecisionError) and outcome.code == "policy_timeout"
            await _until(lambda: checks, "the grace period's check")

        asyncio.run(scenario())
        assert old_state.pool.stuck == 1
        _change_policy(tmp_path, 1)
        assert engine.reload()
        state, loan = checks[0]
        assert state is old_state
        embedded_module.EmbeddedEngine._replace_if_still_stuck(engine, state, loan)
        assert old_state.pool.compiling == 0 and not compiles
        assert not old_state.pool.reserve_if_still_stuck(loan)
        assert old_state.pool.raise_target(WORKERS + 1) == 0
        gate.open.set()
        poll(lambda: old_state.pool.stuck == 0, BOUND_S, "the held evaluation to end")
        assert old_state.pool.size <= 1 and not compiles
    finally:
        gate.open.set()
        engine.close()


def test_r4_retired_pool_keeps_one_free_interpreter_and_drops_the_rest(tmp_path):
    """Unit level: retiring drops free interpreters but one; one coming back while one is free
    is dropped; a compile arriving after retirement is discarded."""
    engine = _engine(tmp_path)
    try:
        pool = engine._state.pool
        reserved = pool.raise_target(WORKERS + 1)
        assert reserved == 1 and pool.size == WORKERS
        loan = Loan(deadline=time.monotonic() + BOUND_S)
        held = pool.borrow(loan)
        assert held is not None
        pool.retire()
        assert pool.retired and pool.size == WORKERS and pool.qsize() == 1
        pool.compile_reserved(reserved, "test")  # arrives after retirement: not kept
        assert pool.size == WORKERS and pool.compiling == 0 and pool.qsize() == 1
        pool.give_back(loan, held)  # one is free already: dropped
        assert pool.size == 1 and pool.qsize() == 1
        again = Loan(deadline=time.monotonic() + BOUND_S)
        last = pool.borrow(again)
        assert last is not None and pool.qsize() == 0
        pool.give_back(again, last)  # none free: kept, for a call that took the revision
        assert pool.size == 1 and pool.qsize() == 1
    finally:
        engine.close()


def test_r4_reloads_racing_calls_answer_or_fail_closed(tmp_path, monkeypatch):
    """Hostile: reloads on another thread while calls stream (some held and timing out).
    Every call is answered or fails closed with policy_timeout (never another exception, never
    a hang), and once the held ones end the engine is back to one revision's threads."""
    gate = _Gate(monkeypatch)
    others = _rego_threads()
    engine = _engine(tmp_path)
    stop = threading.Event()
    reloads: list[bool] = []

    def reloader() -> None:
        tag = 0
        while not stop.is_set() and tag < 40:
            tag += 1
            _change_policy(tmp_path, 100 + tag)
            reloads.append(engine.reload())

    try:

        async def calls() -> list[object]:
            outcomes = []
            thread = threading.Thread(target=reloader, name="test-reloader")
            thread.start()
            try:
                for i in range(300):
                    batch = [_outcome(engine, FAST, 5.0) for _ in range(3)]
                    if i % 100 == 0:  # 3 held in all: a revision never has all stuck
                        batch.append(_outcome(engine, HELD, 0.02))
                    outcomes.extend(await asyncio.gather(*batch))
                    assert engine.running <= engine.running_limit
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, BOUND_S)
            return outcomes

        outcomes = asyncio.run(calls())
        assert reloads and all(reloads)
        for outcome in outcomes:
            assert outcome == 1 or (
                isinstance(outcome, DecisionError) and outcome.code == "policy_timeout"
            ), outcome
        assert sum(outcome == 1 for outcome in outcomes) > 0
        gate.open.set()
        poll(lambda: engine.running == 0, BOUND_S, "the held evaluations to end")

        def old_threads_gone() -> bool:
            gc.collect()
            return _rego_threads() <= others + SET

        poll(old_threads_gone, BOUND_S, "the replaced revisions' threads to exit")
        assert asyncio.run(_outcome(engine, FAST, 5.0)) == 1
    finally:
        stop.set()
        gate.open.set()
        engine.close()


def test_r4_a_kept_decision_error_keeps_no_revision_alive(tmp_path, monkeypatch):
    """The reviewer's side note: a caller that kept the DecisionError kept its revision (and
    its threads) alive through __context__'s traceback frames. Now the error has no context
    and its frames no longer refer to the revision."""
    gate = _Gate(monkeypatch)
    engine = _engine(tmp_path)
    try:
        old_state = engine._state
        error = asyncio.run(_outcome(engine, HELD, 0.02))
        assert isinstance(error, DecisionError) and error.code == "policy_timeout"
        assert error.__context__ is None and error.__cause__ is None
        frames = []
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in frames:
            assert all(value is not old_state for value in frame.f_locals.values())
        _change_policy(tmp_path, 1)
        assert engine.reload()
        gate.open.set()
        poll(lambda: old_state.pool.stuck == 0, BOUND_S, "the held evaluation to end")
    finally:
        gate.open.set()
        engine.close()
