"""A revision's interpreters: lent to one evaluation at a time, replaced when one is stuck.

An evaluation cannot be interrupted: one that runs past its timeout keeps its interpreter until
it ends, and while every interpreter is held that way each next call fails closed
(``policy_timeout``); with ``workers: 1`` and ``inline_max_ms: 0`` one such evaluation is enough.
So when a call gives up (timed out or cancelled) while its evaluation runs, the evaluation is
*stuck*; if it still runs a grace period later (the engine's ``STUCK_GRACE_S``: a cheap
evaluation made late only by a short deadline has ended by then), a fresh interpreter is
compiled in its place, on a thread of its own (a compile takes tens of ms: never on the loop),
at most ``SPARE_MAX`` beyond the revision's size; the stuck one is dropped when it ends.

Only compiled interpreters count when deciding what is surplus: a returning interpreter is
never dropped for a compile still pending (which may fail, or take long); a compile that
arrives when it is no longer needed is discarded instead. So a revision never has fewer
interpreters than its size because of a replacement.

A thread that waits for an interpreter gives up at the call's deadline, and one that gets it
after its call gave up puts it back without evaluating: no engine thread waits for good, and no
answer nobody waits for is computed.

A revision that is replaced is *retired* (:meth:`InterpreterPool.retire`): it gets no more
interpreters (no replacement, no second one), and keeps at most one free (for a call that took
it just before the swap) besides those its running evaluations hold, which are dropped as they
end: a replaced revision's memory is what its still-running evaluations need (review R4).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.policy._rego import CompiledQuery

__all__ = ["SPARE_MAX", "InterpreterPool", "Loan"]

log = logging.getLogger(__name__)

# Interpreters a revision may have beyond its size while evaluations that timed out still hold
# theirs. Each stuck evaluation keeps a core busy until it ends, and each interpreter is ~6 MB
# (docs/performance.md): two cover a stuck evaluation and a second one meanwhile on a 2-core
# pod; a policy that gets stuck more often than that is slow for many inputs, and more
# interpreters would only let more stuck evaluations take the cores. Beyond it, calls fail
# closed (policy_timeout) as before.
SPARE_MAX = 2


@dataclass
class Loan:
    """One call's claim on an interpreter. ``holding``, ``abandoned`` and ``stuck`` are read and
    written under the pool's lock: by the engine thread that borrows and returns, and by the
    event loop when the call gives up (timed out or cancelled)."""

    deadline: float  # time.monotonic()
    holding: bool = False
    abandoned: bool = False
    stuck: bool = False


class InterpreterPool:
    """The interpreters compiled for one revision, and how many it should have (``target``)."""

    def __init__(
        self, interpreters: list[CompiledQuery], compile_more: Callable[[], CompiledQuery]
    ) -> None:
        self._free: queue.SimpleQueue[CompiledQuery] = queue.SimpleQueue()
        for compiled in interpreters:
            self._free.put(compiled)
        self._compile_more = compile_more
        self._lock = threading.Lock()
        self.target = len(interpreters)
        self._compiled = len(interpreters)
        self._compiling = 0
        self._stuck = 0
        self._retired = False

    # --- read by the engine and tests -------------------------------------------------------

    @property
    def size(self) -> int:
        """Interpreters compiled for this revision (free, lent, or held by a stuck evaluation)."""
        return self._compiled

    @property
    def stuck(self) -> int:
        """Evaluations still running past the timeout of their call."""
        return self._stuck

    @property
    def compiling(self) -> int:
        """Replacements reserved and not yet compiled (or discarded)."""
        return self._compiling

    def qsize(self) -> int:
        """Interpreters free now."""
        return self._free.qsize()

    @property
    def retired(self) -> bool:
        """Whether this revision was replaced (see :meth:`retire`)."""
        return self._retired

    def retire(self) -> None:
        """This revision was replaced: drop its free interpreters but one, and from now on
        compile none and keep none that comes back while one is free."""
        with self._lock:
            self._retired = True
            while self._free.qsize() > 1:
                try:
                    self._free.get_nowait()
                except queue.Empty:  # borrowed meanwhile: it comes back through give_back
                    break
                self._compiled -= 1

    def _surplus_locked(self) -> bool:
        """Whether an interpreter coming back is not kept (and uncounted): called under the
        lock by :meth:`put` and :meth:`give_back`."""
        if self._retired:
            surplus = self._free.qsize() >= 1
        else:
            # Only interpreters that exist count: a pending compile never makes a live one
            # surplus (it is discarded on arrival instead, see compile_reserved).
            surplus = self._compiled > self.target + self._stuck
        if surplus:
            self._compiled -= 1
        return surplus

    # --- inline and blocking use (one caller at a time: no deadline, no replacement) --------

    def get(self) -> CompiledQuery:
        return self._free.get()

    def put(self, compiled: CompiledQuery) -> None:
        with self._lock:
            if self._retired and self._surplus_locked():
                return
        self._free.put(compiled)

    # --- in threads ---------------------------------------------------------------------------

    def borrow(self, loan: Loan) -> CompiledQuery | None:
        """An interpreter for ``loan`` (on an engine thread), or None once its deadline passed
        or its call gave up."""
        try:
            compiled = self._free.get(timeout=max(loan.deadline - time.monotonic(), 0.0))
        except queue.Empty:
            return None
        with self._lock:
            if loan.abandoned:
                self._free.put(compiled)
                return None
            loan.holding = True
        return compiled

    def give_back(self, loan: Loan, compiled: CompiledQuery) -> None:
        """Return ``compiled`` after ``loan``'s evaluation; one that outlived its call is
        dropped if a replacement (or the revision's size without it) makes it surplus."""
        with self._lock:
            loan.holding = False
            if loan.stuck:
                self._stuck -= 1
            if self._surplus_locked():
                return
        self._free.put(compiled)

    def abandon(self, loan: Loan) -> bool:
        """The call behind ``loan`` gave up (on the event loop: timed out or cancelled). True
        when its evaluation still runs: that interpreter is stuck, and the caller asks
        :meth:`reserve_if_still_stuck` after a grace period."""
        with self._lock:
            loan.abandoned = True
            if not loan.holding or loan.stuck:
                return False
            loan.stuck = True
            self._stuck += 1
        return True

    def reserve_if_still_stuck(self, loan: Loan) -> bool:
        """True when ``loan``'s evaluation still runs and a replacement is due: reserved here;
        the caller compiles it with :meth:`compile_reserved` (off the loop) or, if it cannot
        start that, gives it back with :meth:`release`."""
        with self._lock:
            if self._retired or not (loan.stuck and loan.holding):
                return False
            alive = self._compiled + self._compiling
            if alive - self._stuck >= self.target or alive >= self.target + SPARE_MAX:
                return False
            self._compiling += 1
        return True

    def raise_target(self, target: int) -> int:
        """Make this revision's size at least ``target``; returns how many interpreters to
        compile (reserved here) for :meth:`compile_reserved`."""
        with self._lock:
            if self._retired:
                return 0
            self.target = max(self.target, target)
            missing = max(0, self.target + self._stuck - self._compiled - self._compiling)
            self._compiling += missing
        return missing

    def release(self, count: int) -> None:
        """Give back ``count`` reservations whose compile never started."""
        with self._lock:
            self._compiling -= count

    def compile_reserved(self, count: int, revision: str) -> None:
        """Compile ``count`` reserved interpreters (on a thread of its own, never the event
        loop's). The source was vetted when the revision loaded; a failure is logged and the
        revision keeps the interpreters it has."""
        for done in range(count):
            try:
                compiled = self._compile_more()
            except Exception as exc:  # the revision keeps working on what it has
                with self._lock:
                    self._compiling -= count - done
                log.warning(
                    "could not compile another policy interpreter",
                    extra={"revision": revision, "error": type(exc).__name__},
                )
                return
            with self._lock:
                self._compiling -= 1
                if self._retired or self._compiled >= self.target + self._stuck:
                    continue  # the stuck one ended meanwhile, or replaced: not kept
                self._compiled += 1
            self._free.put(compiled)
