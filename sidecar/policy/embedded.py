"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp), Rego v1.

The policy is compiled once per interpreter at load (a plan each; interpreters are not
thread-safe). Each call borrows an interpreter, sets the input and runs the prepared plan:

- *inline*, on the event loop, while evaluations are fast (at most ``inline_max_ms``):
  no thread hand-off, which on the baseline policy costs a third as much as the evaluation
  itself; ``server.workers`` processes use the other cores. An inline evaluation cannot be
  interrupted, so one that took longer than its timeout is still refused (``policy_timeout``)
  and, having blocked the loop, moves the revision to the threads for good. So does a policy
  that is slow *repeatedly* (``SLOW_TO_DEMOTE`` of the last ``WINDOW`` evaluations over
  budget), and one that is *far* slow (one evaluation over ``FAR_OVER`` x the budget: each
  such evaluation holds the loop, and every call on it, for that long); one outlier alone (a
  garbage collection, page faults, a cold cache: 5-25 ms of CPU seen on an evaluation that
  costs 0.4) does not. It used to: the revision then paid a thread
  hop per decision for good, and at load every answer waited for the GIL, which the busy
  event loop gives up only every ``sys.getswitchinterval()`` (5 ms): the pod-mode tail-latency
  cliff of issue 26 (docs/performance.md);
- in threads otherwise (evaluation releases the GIL, so they run in parallel), where the
  wait is bounded by the timeout. A revision in threads has at least two interpreters and
  two threads: an evaluation that timed out keeps running (it cannot be interrupted), and
  with one interpreter every other call would queue behind it and fail closed with
  ``policy_timeout`` too. A revision compiled with one (``workers: 1``, the default while
  inline: a second sat idle, ~6 MB) gets its second when it moves to threads, compiled on a
  thread of its own, off the event loop (:meth:`_demote`); until that is in its pool, calls
  share the one. An evaluation that runs past its call (timed out or cancelled) keeps its
  interpreter until it ends; if it still runs ``STUCK_GRACE_S`` later, a fresh one is compiled
  in its place, off the loop, at most ``SPARE_MAX`` beyond the revision's size, and the stuck
  one is dropped when it ends (sidecar/policy/_pool.py). Each revision has its own threads:
  an old revision's stuck evaluations never hold the threads a new one needs. Across all
  revisions at most ``RUNNING_SETS`` revisions' worth of evaluations run at once
  (sidecar/policy/_running.py): past that a call fails closed at once.

Hot reload: :meth:`reload` reads the directory, and if its content hash changed compiles a
complete new set of interpreters on the caller's thread (off the hot path), then swaps one
reference. A call takes that reference once when it starts, so it is evaluated, and reports
its revision, entirely under one policy. A revision that does not load (syntax, unsupported
built-in, bad data) is rejected with :class:`PolicyLoadError` and the old one stays active.
The replaced revision is retired: its queued evaluations fail closed (``policy_timeout``), its
threads exit as its running ones end, and it compiles no more interpreters (review R4).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.policy._memo import DecisionMemo, not_memoizable
from sidecar.policy._pool import SPARE_MAX, InterpreterPool, Loan
from sidecar.policy._rego import ENGINE_VERSION, CompiledQuery, EvalError
from sidecar.policy._rego_input import UnrepresentableInput
from sidecar.policy._running import EngineBusy, RunningBound
from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError
from sidecar.policy.source import PolicySource, load_policy_dir
from sidecar.policy.vet_options import VetOptions

__all__ = ["EmbeddedEngine"]

log = logging.getLogger(__name__)

# Inline evaluations remembered, and how many of them over budget move a revision to threads.
WINDOW = 16
SLOW_TO_DEMOTE = 3
# One inline evaluation over FAR_OVER x inline_max_ms of CPU moves a revision at once. With the
# shipped 5 ms budget that is 50 ms: twice the largest outlier seen on the 0.4 ms baseline
# policy (24.4 ms, a garbage collection or page faults), 15x a full collection since the
# serving heap is frozen (0.9-3.4 ms, docs/performance.md), and a third of the 150 ms that a
# rarely-but-very slow policy spends holding the loop (and every call on it) each time.
FAR_OVER = 10
# An evaluation still running this long after its call gave up is stuck, and gets a replacement
# interpreter. Not at once: a deadline the *agent* chose (decide.py passes min(timeout_ms, the
# call's deadline)) can make a cheap evaluation late, and a replacement for each such call was
# a ~50 ms compile of the shipped policy every time (the review of session 12, F1). 50 ms is
# about that compile: an evaluation that ends sooner frees its interpreter before a replacement
# would have been ready anyway.
STUCK_GRACE_S = 0.05
# Decisions remembered per revision, when its policy makes that exact (sidecar/policy/_memo.py):
# at most MEMO_SIZE x MAX_KEY_CHARS (4 MB) of inputs held; a typical entry is ~0.5 kB.
MEMO_SIZE = 1024


# Interpreters (and threads) a revision evaluated in threads has at least (see above).
THREADED_MIN = 2
# Evaluations running on engine threads across all revisions of one engine, in revisions'
# worth (max(THREADED_MIN, workers) + SPARE_MAX each). Two: a reload while every thread of the
# old revision is held by a stuck evaluation still leaves the new one a full set, and a stream
# of such reloads stops there instead of adding a set of threads, interpreters and stuck
# evaluations' working memory per reload (review R4: 8.4 GB after 8 reloads). Past it a call
# fails closed (policy_timeout) at once rather than queue behind evaluations that may not end.
RUNNING_SETS = 2


class RevisionReplaced(TimeoutError):
    """The revision a call started under was replaced before its evaluation started."""


@dataclass
class _State:
    source: PolicySource
    pool: InterpreterPool
    # This revision's engine threads (started on first use: while inline, none is). One per
    # interpreter it may have, spares included; its own, so an old revision's stuck evaluations
    # never hold a new one's threads. Shut down when the revision is replaced (_activate): its
    # threads exit as its running evaluations end.
    executor: ThreadPoolExecutor
    inline: bool = False
    # This revision's remembered decisions; None when its policy is not memoizable.
    memo: DecisionMemo | None = None
    # Of the last WINDOW inline evaluations, whether each cost more than inline_max_ms
    # (read and written on the event loop thread only).
    recent: collections.deque[bool] = field(
        default_factory=lambda: collections.deque(maxlen=WINDOW)
    )


class EmbeddedEngine:
    """Evaluates ``query`` against a loaded policy directory with a pool of interpreters."""

    name = "embedded"

    def __init__(
        self,
        source: PolicySource,
        query: str,
        *,
        workers: int = 2,
        inline_max_ms: float = 0.0,
        vetting: VetOptions | None = None,
        memo_size: int = MEMO_SIZE,
    ) -> None:
        self._query = query
        self._memo_size = memo_size
        self._vetting = vetting or VetOptions()
        self._workers = workers
        self._inline_max_s = inline_max_ms / 1000
        self._far_s = FAR_OVER * self._inline_max_s
        self._dir = source.root
        self._running = RunningBound(RUNNING_SETS * (max(THREADED_MIN, workers) + SPARE_MAX))
        self._state = self._compile(source)
        self._reload_lock = threading.Lock()

    def _compile(self, source: PolicySource) -> _State:
        interpreters = [
            CompiledQuery(source.modules, source.data, self._query, vetting=self._vetting)
            for _ in range(self._workers)
        ]

        def compile_more() -> CompiledQuery:  # the source was vetted by the first compile
            return CompiledQuery(
                source.modules, source.data, self._query, vetting=self._vetting, vet=False
            )

        memo = None
        if self._memo_size > 0:
            why_not = not_memoizable(source.modules)
            if why_not is None:
                memo = DecisionMemo(self._memo_size)
            else:
                log.info(
                    "policy decisions are not remembered",
                    extra={"revision": source.revision, "why": why_not},
                )
        pool = InterpreterPool(interpreters, compile_more)
        # A thread waiting for an interpreter gives up at its call's deadline (_pool.py).
        executor = ThreadPoolExecutor(
            max_workers=max(THREADED_MIN, self._workers) + SPARE_MAX, thread_name_prefix="rego"
        )
        return _State(source, pool, executor, inline=self._inline_max_s > 0, memo=memo)

    @staticmethod
    def _compile_off_loop(state: _State, count: int) -> None:
        """Compile ``count`` interpreters reserved in ``state``'s pool on a thread of its own
        (never the event loop's: a compile takes tens of ms). A thread that cannot start (a
        pod's pids limit) gives its reservations back: the revision keeps what it has."""
        if count <= 0:
            return
        try:
            threading.Thread(
                target=state.pool.compile_reserved,
                args=(count, state.source.revision),
                name="rego-compile",
                daemon=True,
            ).start()
        except RuntimeError as exc:  # "can't start new thread"
            state.pool.release(count)
            log.warning(
                "could not start compiling another policy interpreter",
                extra={"revision": state.source.revision, "error": str(exc)},
            )

    def _replace_if_still_stuck(self, state: _State, loan: Loan) -> None:
        """On the event loop, ``STUCK_GRACE_S`` after a call gave up while evaluating. A
        replaced revision gets no replacement (its pool refuses it too)."""
        if state is self._state and state.pool.reserve_if_still_stuck(loan):
            log.warning(
                "policy evaluation still running past its call: compiling another interpreter",
                extra={"revision": state.source.revision, "stuck": state.pool.stuck},
            )
            self._compile_off_loop(state, 1)

    def _demote(self, state: _State) -> None:
        """Move ``state`` to the threads and, if it has one interpreter, start compiling its
        second off the event loop. Called on the event loop thread (one demotion per
        revision: ``state.inline`` is read and written there only)."""
        state.inline = False
        self._compile_off_loop(state, state.pool.raise_target(THREADED_MIN))

    @property
    def interpreters(self) -> int:
        """Interpreters compiled for the active revision (the ``workers`` setting, and at
        least ``THREADED_MIN`` once its second is compiled after a move to threads; up to
        ``SPARE_MAX`` more while evaluations that timed out still run)."""
        return self._state.pool.size

    @property
    def stuck(self) -> int:
        """The active revision's evaluations still running past their call's timeout."""
        return self._state.pool.stuck

    @property
    def running(self) -> int:
        """Evaluations running on engine threads, all revisions together (``RUNNING_SETS``
        revisions' worth at most)."""
        return self._running.running

    @property
    def running_limit(self) -> int:
        return self._running.limit

    @property
    def memo(self) -> DecisionMemo | None:
        """The active revision's remembered decisions (None: not memoizable, or off)."""
        return self._state.memo

    @property
    def inline(self) -> bool:
        """Whether the active revision is evaluated on the event loop."""
        return self._state.inline

    @classmethod
    def from_dir(
        cls,
        policy_dir: str | Path,
        query: str,
        *,
        workers: int = 2,
        inline_max_ms: float = 0.0,
        vetting: VetOptions | None = None,
        memo_size: int = MEMO_SIZE,
    ) -> EmbeddedEngine:
        return cls(
            load_policy_dir(policy_dir),
            query,
            workers=workers,
            inline_max_ms=inline_max_ms,
            vetting=vetting,
            memo_size=memo_size,
        )

    @property
    def revision(self) -> str:
        return self._state.source.revision

    @property
    def version(self) -> str:
        return ENGINE_VERSION

    def reload(self) -> bool:
        """Load the policy directory again; swap if it changed. True when a new revision is
        active. Raises ``PolicyLoadError`` (the old revision stays) if it does not load."""
        with self._reload_lock:
            source = load_policy_dir(self._dir)
            if source.revision == self._state.source.revision:
                return False
            self._activate(self._compile(source))
        log.info("policy reloaded", extra={"revision": source.revision})
        return True

    def load(self, source: PolicySource) -> None:
        """Compile ``source`` (a bundle) and make it the active revision, as :meth:`reload`
        does: ``PolicyLoadError`` leaves the old one active."""
        with self._reload_lock:
            self._activate(self._compile(source))
        log.info("policy activated", extra={"revision": source.revision})

    def _activate(self, state: _State) -> None:
        """Make ``state`` the active revision and retire the one it replaces: its queued
        evaluations are cancelled (their calls fail closed), its threads exit as its running
        evaluations end, and it compiles no more interpreters (review R4)."""
        old, self._state = self._state, state
        old.pool.retire()
        old.executor.shutdown(wait=False, cancel_futures=True)

    def healthy(self) -> bool:
        return True

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        state: _State | None = self._state
        assert state is not None
        error: DecisionError
        try:
            if state.inline:
                defined, value = self._evaluate_inline(state, input_doc, timeout_s)
            else:
                # A remembered answer is found here, on the loop: no thread hop, and no
                # waiting for an interpreter that slower evaluations hold.
                memo = state.memo
                key = memo.key(input_doc) if memo is not None and memo.wanted() else None
                if key is not None and memo is not None:
                    found, value = memo.get(key)
                    if found:
                        return EngineResult(True, value, state.source.revision)
                defined, value = await self._evaluate_threaded(state, input_doc, key, timeout_s)
            return EngineResult(defined=defined, value=value, revision=state.source.revision)
        except TimeoutError as exc:
            error = DecisionError("policy_timeout", self._timeout_message(exc, timeout_s))
        except UnrepresentableInput as exc:
            error = _caused_by(DecisionError("input_unrepresentable", str(exc)), exc)
        except EvalError as exc:
            error = _caused_by(
                DecisionError("policy_error", f"policy evaluation failed: {exc}"), exc
            )
        # Raised outside the handler, with this frame's revision dropped: a caller that keeps
        # the error (its __context__, its traceback's frames) keeps no revision alive, with
        # its threads and interpreters (review R4).
        state = None
        raise error

    def _timeout_message(self, exc: TimeoutError, timeout_s: float) -> str:
        if isinstance(exc, EngineBusy):
            return (
                f"the policy engine is running as many evaluations as it allows "
                f"({self._running.limit}): refused without waiting"
            )
        if isinstance(exc, RevisionReplaced):
            return "the policy revision this call started under was replaced before it ran"
        return f"the policy engine did not answer within {timeout_s * 1000:.0f} ms"

    async def _evaluate_threaded(
        self, state: _State, input_doc: dict[str, Any], key: str | None, timeout_s: float
    ) -> tuple[bool, Any]:
        """Evaluate on an engine thread, waiting at most ``timeout_s``. A call that times out
        or is cancelled while its evaluation runs leaves that interpreter stuck: if it still
        runs ``STUCK_GRACE_S`` later, a replacement is compiled off the loop
        (sidecar/policy/_pool.py)."""
        if self._running.full():  # checked again when a thread starts it (_evaluate_missed)
            raise EngineBusy
        timeout_s = max(timeout_s, 0.0)
        loan = Loan(deadline=time.monotonic() + timeout_s)
        try:
            work: Future[tuple[bool, Any]] = state.executor.submit(
                _evaluate_missed, state, input_doc, key, loan, self._running
            )
        except RuntimeError:  # its executor was shut down: replaced since this call began
            raise RevisionReplaced from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(work), timeout=timeout_s)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if work.cancelled() and (current is None or not current.cancelling()):
                # Cancelled in the queue by _activate, not by this call's caller.
                raise RevisionReplaced from None
            self._abandon(state, loan)
            raise
        except TimeoutError:
            self._abandon(state, loan)
            raise

    def _abandon(self, state: _State, loan: Loan) -> None:
        """The call behind ``loan`` gave up: if its evaluation runs, it is stuck."""
        if state.pool.abandon(loan):
            asyncio.get_running_loop().call_later(
                STUCK_GRACE_S, self._replace_if_still_stuck, state, loan
            )

    def evaluate_sync(self, input_doc: dict[str, Any]) -> EngineResult:
        """Blocking evaluation without a timeout, for the CLI."""
        state = self._state
        try:
            defined, value = _evaluate(state, input_doc)
        except UnrepresentableInput as exc:
            raise DecisionError("input_unrepresentable", str(exc)) from exc
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=state.source.revision)

    def _evaluate_inline(
        self, state: _State, input_doc: dict[str, Any], timeout_s: float
    ) -> tuple[bool, Any]:
        """Evaluate on this thread. An answer later than ``timeout_s`` (wall clock) is not
        used. Over ``inline_max_ms`` of this thread's CPU (CPU, not wall time: waiting for the
        GIL or for a core on a busy machine is not the policy being slow) counts against the
        revision, which moves to the threads once that blocked the loop past the timeout, cost
        over ``FAR_OVER`` x the budget, or happened ``SLOW_TO_DEMOTE`` times in the last
        ``WINDOW`` evaluations.

        The CPU clock is read at the end only when the wall clock says the evaluation may
        have been slow: a thread's CPU time never exceeds the wall time it took, and reading
        it is a system call (~1 µs; the wall clock is ~0.05)."""
        if timeout_s <= 0:
            raise TimeoutError
        started, cpu_started = time.monotonic(), time.thread_time()
        try:
            return _evaluate(state, input_doc)
        finally:
            wall = time.monotonic() - started
            late = wall > timeout_s
            cpu = time.thread_time() - cpu_started if wall > self._inline_max_s else wall
            slow = cpu > self._inline_max_s
            state.recent.append(slow)
            far = cpu > self._far_s
            if slow and state.inline and (late or far or sum(state.recent) >= SLOW_TO_DEMOTE):
                self._demote(state)
                log.warning(
                    "policy evaluation is slow: evaluating in threads from now on",
                    extra={
                        "cpu_ms": round(cpu * 1000, 1),
                        "slow_of_last": f"{sum(state.recent)}/{len(state.recent)}",
                        "revision": state.source.revision,
                    },
                )
            if late:
                raise TimeoutError

    def close(self) -> None:
        self._state.executor.shutdown(wait=False, cancel_futures=True)


def _evaluate(state: _State, input_doc: dict[str, Any]) -> tuple[bool, Any]:
    compiled = state.pool.get()
    try:
        return compiled.evaluate(input_doc, state.memo)
    finally:
        state.pool.put(compiled)


def _caused_by(error: DecisionError, cause: Exception) -> DecisionError:
    """``error`` caused by ``cause``, without ``cause``'s traceback and context (whose frames
    hold the revision: see :meth:`EmbeddedEngine.evaluate`)."""
    cause.__context__ = None
    error.__cause__ = cause.with_traceback(None)
    return error


def _evaluate_missed(
    state: _State, input_doc: dict[str, Any], key: str | None, loan: Loan, running: RunningBound
) -> tuple[bool, Any]:
    """On an engine thread: an input the memo was asked for (under ``key``) and missed.
    No interpreter free before the deadline (or the call gave up): ``TimeoutError``; as many
    evaluations running as the engine allows: ``EngineBusy``."""
    running.enter()
    try:
        compiled = state.pool.borrow(loan)
        if compiled is None:
            raise TimeoutError
        try:
            return compiled.evaluate_missed(input_doc, state.memo if key is not None else None, key)
        finally:
            state.pool.give_back(loan, compiled)
    finally:
        running.leave()
