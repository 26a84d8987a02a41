"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp), Rego v1.

The policy is compiled once per interpreter at load (a plan each; interpreters are not
thread-safe). Each call borrows an interpreter, sets the input and runs the prepared plan:

- *inline*, on the event loop, while evaluations are fast (at most ``inline_max_ms``):
  no thread hand-off, which on the baseline policy costs a third as much as the evaluation
  itself; ``server.workers`` processes use the other cores. An inline evaluation cannot be
  interrupted, so one that took longer than its timeout is still refused (``policy_timeout``)
  and, having blocked the loop, moves the revision to the threads for good. So does a policy
  that is slow *repeatedly* (``SLOW_TO_DEMOTE`` of the last ``WINDOW`` evaluations over
  budget); one outlier alone (a garbage collection, page faults, a cold cache: 5-25 ms of CPU
  seen on an evaluation that costs 0.4) does not. It used to: the revision then paid a thread
  hop per decision for good, and at load every answer waited for the GIL, which the busy
  event loop gives up only every ``sys.getswitchinterval()`` (5 ms): the pod-mode tail-latency
  cliff of issue 26 (docs/performance.md);
- in threads otherwise (evaluation releases the GIL, so they run in parallel), where the
  wait is bounded by the timeout. A revision in threads has at least two interpreters and
  two threads: an evaluation that timed out keeps running (it cannot be interrupted), and
  with one interpreter every other call would queue behind it and fail closed with
  ``policy_timeout`` too. A revision compiled with one (``workers: 1``, the default while
  inline: a second sat idle, ~6 MB) gets its second when it moves to threads, compiled on a
  thread of its own, off the event loop (:meth:`_grow`); until that is in its pool, calls
  share the one.

Hot reload: :meth:`reload` reads the directory, and if its content hash changed compiles a
complete new set of interpreters on the caller's thread (off the hot path), then swaps one
reference. A call takes that reference once when it starts, so it is evaluated, and reports
its revision, entirely under one policy. A revision that does not load (syntax, unsupported
built-in, bad data) is rejected with :class:`PolicyLoadError` and the old one stays active.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.policy._memo import DecisionMemo, not_memoizable
from sidecar.policy._rego import ENGINE_VERSION, CompiledQuery, EvalError
from sidecar.policy._rego_input import UnrepresentableInput
from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError
from sidecar.policy.source import PolicySource, load_policy_dir
from sidecar.policy.vet_options import VetOptions

__all__ = ["EmbeddedEngine"]

log = logging.getLogger(__name__)

# Inline evaluations remembered, and how many of them over budget move a revision to threads.
WINDOW = 16
SLOW_TO_DEMOTE = 3
# Decisions remembered per revision, when its policy makes that exact (sidecar/policy/_memo.py):
# at most MEMO_SIZE x MAX_KEY_CHARS (4 MB) of inputs held; a typical entry is ~0.5 kB.
MEMO_SIZE = 1024


# Interpreters (and threads) a revision evaluated in threads has at least (see above).
THREADED_MIN = 2


@dataclass
class _State:
    source: PolicySource
    pool: queue.SimpleQueue[CompiledQuery]
    # Interpreters compiled for this revision (in the pool or borrowed).
    size: int = 0
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
        self._dir = source.root
        self._state = self._compile(source)
        self._reload_lock = threading.Lock()
        # Threads start on first use: while inline, none does.
        self._executor = ThreadPoolExecutor(
            max_workers=max(THREADED_MIN, workers), thread_name_prefix="rego"
        )

    def _compile(self, source: PolicySource) -> _State:
        pool: queue.SimpleQueue[CompiledQuery] = queue.SimpleQueue()
        for _ in range(self._workers):
            pool.put(CompiledQuery(source.modules, source.data, self._query, vetting=self._vetting))
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
        return _State(source, pool, self._workers, inline=self._inline_max_s > 0, memo=memo)

    def _grow(self, state: _State) -> None:
        """Add interpreters to ``state``'s pool up to ``THREADED_MIN``, on this thread (never
        the event loop's: a compile takes tens of ms). The source was vetted when the revision
        loaded, so it is not vetted again. A failure leaves the revision its one interpreter."""
        try:
            while state.size < THREADED_MIN:
                state.pool.put(
                    CompiledQuery(
                        state.source.modules,
                        state.source.data,
                        self._query,
                        vetting=self._vetting,
                        vet=False,
                    )
                )
                state.size += 1
        except Exception as exc:  # the revision keeps working on the interpreter it has
            log.warning(
                "could not compile another policy interpreter",
                extra={"revision": state.source.revision, "error": type(exc).__name__},
            )

    def _demote(self, state: _State) -> None:
        """Move ``state`` to the threads and, if it has one interpreter, start compiling its
        second off the event loop. Called on the event loop thread (one demotion per
        revision: ``state.inline`` is read and written there only)."""
        state.inline = False
        if state.size < THREADED_MIN:
            threading.Thread(
                target=self._grow, args=(state,), name="rego-compile", daemon=True
            ).start()

    @property
    def interpreters(self) -> int:
        """Interpreters compiled for the active revision (the ``workers`` setting, and at
        least ``THREADED_MIN`` once its second is compiled after a move to threads)."""
        return self._state.size

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
            self._state = self._compile(source)
        log.info("policy reloaded", extra={"revision": source.revision})
        return True

    def load(self, source: PolicySource) -> None:
        """Compile ``source`` (a bundle) and make it the active revision, as :meth:`reload`
        does: ``PolicyLoadError`` leaves the old one active."""
        with self._reload_lock:
            self._state = self._compile(source)
        log.info("policy activated", extra={"revision": source.revision})

    def healthy(self) -> bool:
        return True

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        state = self._state
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
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(
                    self._executor, _evaluate_missed, state, input_doc, key
                )
                defined, value = await asyncio.wait_for(future, timeout=max(timeout_s, 0.0))
        except TimeoutError:
            raise DecisionError(
                "policy_timeout",
                f"the policy engine did not answer within {timeout_s * 1000:.0f} ms",
            ) from None
        except UnrepresentableInput as exc:
            raise DecisionError("input_unrepresentable", str(exc)) from exc
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=state.source.revision)

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
        revision, which moves to the threads once that blocked the loop past the timeout, or
        happened ``SLOW_TO_DEMOTE`` times in the last ``WINDOW`` evaluations.

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
            if slow and state.inline and (late or sum(state.recent) >= SLOW_TO_DEMOTE):
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
        self._executor.shutdown(wait=False, cancel_futures=True)


def _evaluate(state: _State, input_doc: dict[str, Any]) -> tuple[bool, Any]:
    compiled = state.pool.get()
    try:
        return compiled.evaluate(input_doc, state.memo)
    finally:
        state.pool.put(compiled)


def _evaluate_missed(state: _State, input_doc: dict[str, Any], key: str | None) -> tuple[bool, Any]:
    """On an engine thread: an input the memo was asked for (under ``key``) and missed."""
    compiled = state.pool.get()
    try:
        return compiled.evaluate_missed(input_doc, state.memo if key is not None else None, key)
    finally:
        state.pool.put(compiled)
