"""Evaluations running on engine threads, counted across every revision of one engine.

Each revision has its own threads (sidecar/policy/embedded.py), and an evaluation cannot be
interrupted: a replaced revision's evaluations keep their threads, interpreters and working
memory until they end. Without a count over all revisions, a stream of reloads while
evaluations are stuck added a revision's worth of each per reload (the review of session 12,
R4: 32 threads, 16 stuck evaluations, 34 interpreters, 8.4 GB after 8 reloads). With it, a
call that would start one more past the bound fails closed at once instead.
"""

from __future__ import annotations

import threading

__all__ = ["EngineBusy", "RunningBound"]


class EngineBusy(TimeoutError):
    """As many evaluations run on engine threads as the engine allows: the call is refused
    (``policy_timeout``) without waiting, since those may not end before its deadline."""


class RunningBound:
    """At most ``limit`` evaluations running at once (an engine thread inside one, waiting for
    an interpreter included). Thread-safe: entered and left on engine threads, read on the
    event loop."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the bound on running evaluations must be at least 1")
        self.limit = limit
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    def full(self) -> bool:
        """Whether a new evaluation would be refused now (checked before queueing one)."""
        return self._running >= self.limit

    def enter(self) -> None:
        """Count one more running evaluation, or raise :class:`EngineBusy` (counting none)."""
        with self._lock:
            if self._running >= self.limit:
                raise EngineBusy
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
