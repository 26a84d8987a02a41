"""Tasks: an agent's authority bounded by what it is doing and for how long.

``StartTask(intent, ttl_s)`` registers a task owned by the calling agent; calls carrying its
id are counted (``input.task.calls``, ``tokens``, ``age_s`` for policy). Ending it, or its TTL
passing, revokes its pending approvals and every upstream credential the sidecar cached for
it (the ``on_end`` hooks), and every later call under it is denied with ``task_ended``. Tasks
are stored in the state store: an ended task stays ended across restarts, and on a shared store
(PostgreSQL) on every replica, whose own hooks run when the change feed announces the end.

A task is usable by its owner, and by agents whose verified delegation chain contains the
owner (work delegated within the task); to anyone else it does not exist (``task_unknown``).

A task opened by an inbound A2A call carries its :class:`Provenance` (docs/a2a.md
"Provenance"): the verified chain every call under it gives policy, and the transaction it
belongs to. Ending a transaction's origin task ends every task bound to that transaction in
the same store (``txn_ended``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.errors import SidecarError
from sidecar.ids import new_decision_id
from sidecar.policy.input import TaskInfo
from sidecar.state import Conn, StateDb
from sidecar.tasks_settings import TaskSettings

__all__ = ["Provenance", "Task", "TaskError", "TaskRegistry"]

log = logging.getLogger(__name__)

# A catch-up looks this much further back than the last one (other hosts' clocks).
CATCH_UP_MARGIN_NS = 60 * 1_000_000_000


class TaskError(SidecarError):
    """``code``: ``task_unknown`` (no such task for this caller), ``task_ended``,
    ``invalid_task`` (a bad StartTask request)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Provenance:
    """Who started the work a task does: the verified chain (outermost first) every call
    under the task carries, and the transaction (``txn``) it belongs to."""

    txn: str
    requester: str
    purpose: str
    chain: tuple[str, ...]
    origin: bool = False  # this task started the transaction
    token_exp: int = 0  # the incoming transaction token's exp (0: this sidecar minted it)
    # The transaction token the task was joined with: the next one nests it (bound to the
    # sidecar that presented it, so useless to anyone else; never audited or logged).
    token: str = dataclasses.field(default="", repr=False)

    def to_input(self) -> dict[str, str]:
        """``input.delegation.origin``."""
        return {"txn": self.txn, "requester": self.requester, "purpose": self.purpose}


@dataclass(frozen=True)
class Task:
    id: str
    owner: str
    intent: str
    started_ns: int
    expires_ns: int
    ended_ns: int = 0
    end_reason: str = ""
    calls: int = 0
    tokens: int = 0
    # Attached by the call's establish step when the task has one (not a tasks column).
    provenance: Provenance | None = None

    @property
    def state(self) -> str:
        if self.ended_ns:
            return "expired" if self.end_reason == "expired" else "ended"
        return "active"

    def info(self, now_ns: int) -> TaskInfo:
        """What policy sees: ``calls`` made under the task before this one."""
        return TaskInfo(
            id=self.id,
            intent=self.intent,
            calls=self.calls,
            tokens=self.tokens,
            age_s=round((now_ns - self.started_ns) / 1e9, 3),
        )


class TaskRegistry:
    def __init__(
        self,
        db: StateDb,
        settings: TaskSettings,
        on_end: Sequence[Callable[[Task], None]] = (),
    ) -> None:
        self._db = db
        self._settings = settings
        self._on_end = list(on_end)
        self._caught_up_ns = time.time_ns()

    def add_end_hook(self, hook: Callable[[Task], None]) -> None:
        self._on_end.append(hook)

    def without_waiting(self) -> contextlib.AbstractContextManager[None]:
        """The store's :meth:`StateDb.without_waiting`: the registry's work inside runs on the
        calling thread, or raises ``StateBusy`` having written nothing."""
        return self._db.without_waiting()

    def start(self, owner: str, intent: str, ttl_s: int = 0) -> Task:
        task = self._new(owner, intent, ttl_s)
        with self._db.transaction() as conn:
            _insert_task(conn, task)
        log.info("task started", extra={"task_id": task.id, "subject": owner})
        return task

    def start_bound(
        self, owner: str, intent: str, ttl_s: int, provenance: Provenance, *, durable: bool
    ) -> Task:
        """A task and its provenance in one transaction (an inbound A2A call opens its task
        so), returned as stored with ``provenance`` attached: no re-read. ``durable=False``
        commits without waiting for the disk; a task a power cut loses is unknown afterwards,
        and every later call naming it is refused (docs/a2a.md "Provenance")."""
        task = self._new(owner, intent, ttl_s)
        with self._db.transaction(durable=durable) as conn:
            _insert_task(conn, task)
            _insert_provenance(conn, task.id, provenance)
        # debug: one per inbound call, whose audit record names the task (a log line cost
        # ~0.1 ms of the inbound listener's pass, docs/a2a.md "Measured")
        log.debug("task started", extra={"task_id": task.id, "subject": owner})
        return dataclasses.replace(task, provenance=provenance)

    def _new(self, owner: str, intent: str, ttl_s: int) -> Task:
        settings = self._settings
        if ttl_s < 0 or ttl_s > settings.max_ttl_s:
            raise TaskError(
                f"ttl_s {ttl_s} is outside 0..{settings.max_ttl_s} (tasks.max_ttl_s)",
                code="invalid_task",
            )
        if len(intent) > 4096:
            raise TaskError("intent is longer than 4096 characters", code="invalid_task")
        now = time.time_ns()
        return Task(
            id="t-" + new_decision_id(now),
            owner=owner,
            intent=intent,
            started_ns=now,
            expires_ns=now + (ttl_s or settings.default_ttl_s) * 1_000_000_000,
        )

    def get(self, task_id: str) -> Task | None:
        rows = self._db.query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return Task(**dict(rows[0])) if rows else None

    def _visible(self, task_id: str, caller: str, delegation: Sequence[str]) -> Task:
        task = self.get(task_id)
        if task is None or (task.owner != caller and task.owner not in delegation):
            raise TaskError(f"no task {task_id!r} for this caller", code="task_unknown")
        return task

    def use(
        self, task_id: str, caller: str, delegation: Sequence[str] = (), *, count: bool = True
    ) -> Task:
        """The task a call runs under, as it was before this call; counts the call (a Check
        does not)."""
        if count:  # the common case in one statement: a live task of this caller, counted
            owners = (caller, *delegation)
            marks = ",".join("?" * len(owners))  # placeholders only: no input in the SQL
            rows = self._db.write(
                "UPDATE tasks SET calls = calls + 1 WHERE id = ? AND ended_ns = 0 "  # noqa: S608
                f"AND expires_ns > ? AND owner IN ({marks}) RETURNING *",
                (task_id, time.time_ns(), *owners),
                durable=False,
            )
            if rows:
                counted = Task(**dict(rows[0]))
                return dataclasses.replace(counted, calls=counted.calls - 1)
        task = self._visible(task_id, caller, delegation)  # why not: unknown, ended, expired
        now = time.time_ns()
        if not task.ended_ns and task.expires_ns <= now:
            task = self._end(task, "expired")
        if task.ended_ns:
            raise TaskError(f"task {task_id} has {task.state}", code="task_ended")
        if count:  # visible and live now, though the statement above found it otherwise
            with self._db.transaction(durable=False) as conn:
                conn.execute("UPDATE tasks SET calls = calls + 1 WHERE id = ?", (task_id,))
        return task

    def bind(self, task_id: str, provenance: Provenance) -> None:
        """Record ``task_id``'s provenance (once: a task's chain never changes; a racing
        second bind is a no-op, so callers re-read :meth:`provenance`)."""
        with self._db.transaction() as conn:
            _insert_provenance(conn, task_id, provenance)

    def provenance(self, task_id: str) -> Provenance | None:
        rows = self._db.query("SELECT * FROM task_provenance WHERE task_id = ?", (task_id,))
        return _provenance(rows[0]) if rows else None

    def bound_to(self, txn: str, owner: str) -> Task | None:
        """The live task of ``owner`` bound to transaction ``txn`` (an inbound call joins it)."""
        rows = self._db.query(
            "SELECT t.* FROM tasks t JOIN task_provenance p ON p.task_id = t.id "
            "WHERE p.txn = ? AND t.owner = ? AND t.ended_ns = 0 AND t.expires_ns > ? "
            "ORDER BY t.started_ns LIMIT 1",
            (txn, owner, time.time_ns()),
        )
        return Task(**dict(rows[0])) if rows else None

    def txn_state(self, txn: str) -> str:
        """``active``, ``ended`` or ``unknown``: the transaction's origin task, as this store
        holds it (the origin status check answers it)."""
        rows = self._db.query(
            "SELECT t.ended_ns, t.expires_ns FROM tasks t JOIN task_provenance p "
            "ON p.task_id = t.id WHERE p.txn = ? AND p.origin = 1",
            (txn,),
        )
        if not rows:
            return "unknown"
        return "ended" if self.txn_ended(txn) else "active"

    def txn_ended(self, txn: str) -> bool:
        """The transaction's origin task, if this store holds it, has ended."""
        rows = self._db.query(
            "SELECT t.ended_ns, t.expires_ns FROM tasks t JOIN task_provenance p "
            "ON p.task_id = t.id WHERE p.txn = ? AND p.origin = 1",
            (txn,),
        )
        now = time.time_ns()
        return any(row["ended_ns"] or row["expires_ns"] <= now for row in rows)

    def add_tokens(self, task_id: str, tokens: int) -> None:
        with self._db.transaction(durable=False) as conn:
            conn.execute("UPDATE tasks SET tokens = tokens + ? WHERE id = ?", (tokens, task_id))

    def end(self, task_id: str, caller: str) -> Task:
        """End a task (its owner only). Ending an ended task changes nothing."""
        task = self.get(task_id)
        if task is None or task.owner != caller:
            raise TaskError(f"no task {task_id!r} for this caller", code="task_unknown")
        if task.ended_ns:
            return task
        return self._end(task, "ended")

    def ended_elsewhere(self, task_id: str) -> None:
        """Another replica ended ``task_id`` (heard on the change feed): revoke here too what
        this replica holds for it (cached credentials, approvals waited on)."""
        task = self.get(task_id)
        if task is None or not task.ended_ns:
            return
        log.info(
            "task ended on another replica; revoked here",
            extra={"task_id": task_id, "reason": task.end_reason},
        )
        self._run_hooks(task)

    def catch_up(self) -> None:
        """After the change feed reconnected: run the end hooks of every task that ended since
        the last catch-up (announcements may have been lost meanwhile; the hooks are
        idempotent)."""
        since, self._caught_up_ns = self._caught_up_ns, time.time_ns()
        rows = self._db.query(
            "SELECT * FROM tasks WHERE ended_ns >= ? ORDER BY ended_ns LIMIT 10000",
            (since - CATCH_UP_MARGIN_NS,),
        )
        for row in rows:
            self._run_hooks(Task(**dict(row)))

    def sweep(self) -> list[Task]:
        """End every task whose TTL has passed."""
        rows = self._db.query(
            "SELECT * FROM tasks WHERE ended_ns = 0 AND expires_ns <= ?", (time.time_ns(),)
        )
        return [self._end(Task(**dict(row)), "expired") for row in rows]

    def _end(self, task: Task, reason: str) -> Task:
        now = time.time_ns()
        with self._db.transaction() as conn:
            changed = conn.execute(
                "UPDATE tasks SET ended_ns = ?, end_reason = ? WHERE id = ? AND ended_ns = 0",
                (now, reason, task.id),
            ).rowcount
            if changed:
                self._db.notify(conn, "task_ended", task.id)
        ended = self.get(task.id)
        assert ended is not None
        if changed:
            log.info("task ended", extra={"task_id": task.id, "reason": reason})
            self._run_hooks(ended)
            self._end_bound(task.id)
        return ended

    def _end_bound(self, task_id: str) -> None:
        """An origin task ended: so does every task bound to its transaction."""
        rows = self._db.query(
            "SELECT t.* FROM tasks t JOIN task_provenance p ON p.task_id = t.id "
            "WHERE t.ended_ns = 0 AND p.origin = 0 AND p.txn IN "
            "(SELECT txn FROM task_provenance WHERE task_id = ? AND origin = 1)",
            (task_id,),
        )
        for row in rows:
            self._end(Task(**dict(row)), "txn_ended")

    def _run_hooks(self, task: Task) -> None:
        for hook in self._on_end:
            try:
                hook(task)
            except Exception:
                log.exception("task end hook failed", extra={"task_id": task.id})


def _insert_task(conn: Conn, task: Task) -> None:
    conn.execute(
        "INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) VALUES (?,?,?,?,?)",
        (task.id, task.owner, task.intent, task.started_ns, task.expires_ns),
    )


def _insert_provenance(conn: Conn, task_id: str, provenance: Provenance) -> None:
    conn.execute(
        "INSERT INTO task_provenance (task_id, txn, requester, purpose, chain, origin, "
        "token_exp, token, created_ns) VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (task_id) DO NOTHING",
        (
            task_id,
            provenance.txn,
            provenance.requester,
            provenance.purpose,
            json.dumps(list(provenance.chain)),
            int(provenance.origin),
            provenance.token_exp,
            provenance.token,
            time.time_ns(),
        ),
    )


def _provenance(row: object) -> Provenance:
    doc = dict(row)  # type: ignore[call-overload]
    return Provenance(
        txn=doc["txn"],
        requester=doc["requester"],
        purpose=doc["purpose"],
        chain=tuple(json.loads(doc["chain"])),
        origin=bool(doc["origin"]),
        token_exp=int(doc["token_exp"]),
        token=doc["token"],
    )
