"""Retention of the A2A task-ownership rows (docs/a2a.md "A peer's tasks belong to ...").

Every task id and context id an answer names (inbound: the agent's answers to its callers;
outbound: a peer's answers to the local agents, and the contextIds they claim) adds one row
to ``a2a_task_owners``. Without a retention an agent inventing a ``contextId`` on every
message grows the table forever. The sidecar's sweep (sidecar/app.py, in a thread) calls
:meth:`OwnershipRetention.run_if_due`; rows unused (created, matched, named again) for
``a2a.task_ownership_ttl_s`` are deleted in bounded batches. A pruned id is unknown: a request
naming it as a task is refused (``task_not_owned``), fail closed. Before its first prune a
process moves the context rows recorded before keys were folded to their folded key
(context_rekey.py; until it succeeds, every pass retries it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.a2a.context_rekey import rekey_contexts
from sidecar.a2a.task_owners import Pruned, TaskOwners
from sidecar.state import StateDb

__all__ = ["PRUNE_EVERY_S", "OwnershipRetention"]

# How often a pass looks for expired rows (one indexed read when there are none); a pass
# that left rows behind is followed by another at the next sweep.
PRUNE_EVERY_S = 5.0


class OwnershipRetention:
    """Prunes ``a2a_task_owners`` for one sidecar process (blocking: call it off the loop)."""

    def __init__(
        self,
        db: StateDb,
        ttl_s: float,
        *,
        every_s: float = PRUNE_EVERY_S,
        now: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owners = TaskOwners(db, now=now)
        self._ttl_ns = int(ttl_s * 1e9)
        self._every_s = every_s
        self._now = now
        self._clock = clock
        self._next = clock()
        self._db = db
        self._rekeyed = False

    def run_if_due(self) -> Pruned | None:
        """One bounded pass when one is due (None when not)."""
        started = self._clock()
        if started < self._next:
            return None
        if not self._rekeyed:  # once per process, before any prune (review s12 R3)
            rekey_contexts(self._db)
            self._rekeyed = True
        pruned = self._owners.prune(self._now() - self._ttl_ns)
        self._next = started if pruned.more else started + self._every_s
        return pruned
