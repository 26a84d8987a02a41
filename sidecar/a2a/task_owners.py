"""Which inbound caller owns which A2A task and context (docs/a2a.md "Inbound").

The agent's A2A server keeps every caller's tasks in one store and, unless it maps the
caller to its own notion of a user, answers ``GetTask`` for any id it is given. So the
sidecar records, from the agent's own answers (unary results and every SSE event, before
any of it reaches the caller), which verified caller each task id and context id was
created for; a later request naming a task or context is passed on only for its owner
(``task_not_owned`` otherwise, an unknown task id included), and ``ListTasks``, which
would list every caller's tasks, is refused (``list_tasks_refused``). A message's
``referenceTaskIds`` (tasks an SDK agent loads and hands its executor) are checked the same way.
The outbound side keeps its peers' tasks here too (peer_tasks.py, under ``a2a-peer:PEER``),
and claims a context once policy allowed the send (:meth:`TaskOwners.claim`). A context is
owned under its folded key (context_key.py), so ids a peer or agent may fold together are one
context. Every row records its last use; rows unused for ``a2a.task_ownership_ttl_s`` are
pruned (ownership_retention.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.a2a.context_key import context_key
from sidecar.state import Conn, StateDb

__all__ = ["OwnershipLimit", "Pruned", "TaskOwners", "ids_in_answer", "ids_in_events"]

MAX_ID_CHARS = 256
# A lookup records a row's use at most this often (the retention is far longer).
TOUCH_EVERY_NS = 60 * 1_000_000_000
# Rows one pruning transaction deletes at most.
PRUNE_BATCH = 500
_MAX_WALK = 4  # result -> task/statusUpdate/message -> fields
# One SSE event ends at a blank line (the SDK writes \r\n line ends).
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class OwnershipLimit(Exception):
    """A claim refused: the caller already owns ``limit`` ids under this agent key."""


@dataclass(frozen=True)
class Pruned:
    """What one pruning pass deleted, and whether rows past its batches remain."""

    deleted: int
    more: bool


class TaskOwners:
    """The ``a2a_task_owners`` table for one agent (blocking: call it off the loop).

    Each row records when it was last used (``used_ns``: created, matched by a lookup, or
    named again by an answer); :meth:`prune` deletes the rows unused for the retention.
    A lookup writes its use at most once per ``TOUCH_EVERY_NS`` (a read stays a read)."""

    def __init__(self, db: StateDb, *, now: Callable[[], int] = time.time_ns) -> None:
        self._db = db
        self._now = now

    def now(self) -> int:
        """The store's clock (ns), injected by tests."""
        return self._now()

    def owners(
        self, agent: str, task_id: str, context_id: str, *, touch: bool = True
    ) -> tuple[str, str]:
        """The callers owning ``task_id`` and ``context_id`` ("" when unknown or not named).
        ``touch=False``: a pure read (a check made before policy marks nothing used)."""
        return (
            self._owner(agent, "task:" + task_id, touch) if task_id else "",
            self._owner(agent, "context:" + context_id, touch) if context_id else "",
        )

    def task_owners(self, agent: str, task_ids: Iterable[str]) -> dict[str, str]:
        """The caller owning each known task of ``task_ids`` (unknown ids absent; the
        listener bounds how many one request may name)."""
        found = {}
        for task_id in dict.fromkeys(task_ids):
            if owner := self._owner(agent, "task:" + task_id):
                found[task_id] = owner
        return found

    def _owner(self, agent: str, key: str, touch: bool = True) -> str:
        keys = stored_keys(key)
        rows = self._db.query(
            "SELECT task_id, caller, used_ns FROM a2a_task_owners "
            "WHERE agent = ? AND task_id IN (?, ?)",
            (agent, keys[0], keys[-1]),
        )
        if not rows:
            return ""
        row = min(rows, key=lambda r: keys.index(str(r["task_id"])))  # the folded key's first
        now = self._now()
        if touch and int(row["used_ns"]) < now - TOUCH_EVERY_NS:
            # Not a decision: a use lost in a power cut only prunes a row a minute early.
            self._db.write(
                "UPDATE a2a_task_owners SET used_ns = ? "
                "WHERE agent = ? AND task_id = ? AND used_ns < ?",
                (now, agent, str(row["task_id"]), now - TOUCH_EVERY_NS),
                durable=False,
            )
        return str(row["caller"])

    def claim(self, agent: str, caller: str, key: str, limit: int = 0) -> str:
        """Make ``key`` (``context:ID``) ``caller``'s unless someone owns it; the owner after
        the claim. Insert-if-absent in one transaction, so of two concurrent claims (any
        worker, any replica) exactly one wins. ``limit`` > 0: a new claim is refused
        (:class:`OwnershipLimit`) once ``caller`` owns that many ids under ``agent``."""
        now = self._now()
        keys = stored_keys(key)
        with self._db.transaction() as conn:
            found, owner = _row_owner(conn, agent, keys)
            if owner:
                if owner == caller:
                    _touch(conn, agent, found, now)
                return owner
            if limit > 0:
                # One claimer per (agent, caller) at a time: the count cannot be raced past.
                self._db.lock(conn, f"a2a-owners:{agent}:{caller}")
                held = conn.execute(
                    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM a2a_task_owners "
                    "WHERE agent = ? AND caller = ? LIMIT ?) AS mine",
                    (agent, caller, limit),
                ).fetchone()
                if int(held["n"]) >= limit:
                    raise OwnershipLimit(f"{limit} ids owned already")
            conn.execute(
                "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
                "VALUES (?,?,?,?,?) ON CONFLICT (agent, task_id) DO NOTHING",
                (agent, keys[0], caller, now, now),
            )
            return _row_owner(conn, agent, keys[:1])[1]

    def record(self, agent: str, caller: str, ids: Iterable[str]) -> None:
        """``caller`` owns ``ids`` (``task:ID`` / ``context:ID``), unless one already has
        another owner: the first answer naming an id decides. An id ``caller`` already
        owns is marked used. A context is recorded under its folded key."""
        keys = sorted({stored_keys(key)[0] for key in ids})
        if not keys:
            return
        now = self._now()
        with self._db.transaction() as conn:
            for key in keys:
                conn.execute(
                    "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
                    "VALUES (?,?,?,?,?) ON CONFLICT (agent, task_id) DO UPDATE "
                    "SET used_ns = excluded.used_ns "
                    "WHERE a2a_task_owners.caller = excluded.caller",
                    (agent, key, caller, now, now),
                )

    def prune(self, unused_since_ns: int, *, batch: int = PRUNE_BATCH, batches: int = 8) -> Pruned:
        """Delete the rows (every agent key: inbound and outbound alike) last used before
        ``unused_since_ns``: at most ``batches`` transactions of ``batch`` rows each, so a
        backlog never holds the store's write lock for long (the next pass goes on)."""
        stale = "SELECT 1 FROM a2a_task_owners WHERE used_ns < ? LIMIT 1"
        if not self._db.query(stale, (unused_since_ns,)):
            return Pruned(0, more=False)  # the usual pass: one indexed read, no write lock
        deleted = 0
        for _ in range(batches):
            with self._db.transaction() as conn:
                # used_ns checked again on the row itself: a row used meanwhile stays.
                gone = conn.execute(
                    "DELETE FROM a2a_task_owners WHERE used_ns < ? AND (agent, task_id) IN "
                    "(SELECT agent, task_id FROM a2a_task_owners WHERE used_ns < ? LIMIT ?)",
                    (unused_since_ns, unused_since_ns, batch),
                ).rowcount
            deleted += max(gone, 0)
            if gone < batch:
                return Pruned(deleted, more=False)
        return Pruned(deleted, more=True)


def stored_keys(key: str) -> tuple[str, ...]:
    """Where the row for ``key`` (``task:ID`` / ``context:ID``) is, best first: a task id as
    it is; a context under its folded key (context_key.py), then as it is (a row recorded
    before keys were folded, until it expires)."""
    if not key.startswith("context:"):
        return (key,)
    folded = "context:" + context_key(key[len("context:") :])
    return (folded,) if folded == key else (folded, key)


def _row_owner(conn: Conn, agent: str, keys: tuple[str, ...]) -> tuple[str, str]:
    """The key found (the first of ``keys`` that has a row) and its owner."""
    for key in keys:
        row = conn.execute(
            "SELECT caller FROM a2a_task_owners WHERE agent = ? AND task_id = ?", (agent, key)
        ).fetchone()
        if row is not None:
            return key, str(row["caller"])
    return "", ""


def _touch(conn: Conn, agent: str, key: str, now: int) -> None:
    conn.execute(
        "UPDATE a2a_task_owners SET used_ns = ? WHERE agent = ? AND task_id = ? AND used_ns < ?",
        (now, agent, key, now - TOUCH_EVERY_NS),
    )


def ids_in_answer(body: bytes) -> set[str]:
    """``task:ID`` and ``context:ID`` keys named by one JSON-RPC answer (a task, a message,
    a status or artifact update; 1.0 and 0.3 shapes alike). Unreadable: none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()
    return ids_in_result(doc.get("result")) if isinstance(doc, dict) else set()


def ids_in_result(result: Any) -> set[str]:
    """The keys named by one JSON-RPC ``result``, already parsed (the outbound side's)."""
    found: set[str] = set()
    _walk(result, found, 0)
    return found


def ids_in_events(buffer: bytes) -> tuple[set[str], int]:
    """The keys named by the complete SSE events at the start of ``buffer``, and how many
    bytes those events span (the rest is an event still arriving)."""
    found: set[str] = set()
    end = 0
    for match in _EVENT_END.finditer(buffer):
        event = buffer[end : match.end()]
        data = b"\n".join(
            line[5:].lstrip(b" ")
            for line in event.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if data:
            found |= ids_in_answer(data)
        end = match.end()
    return found, end


def _walk(node: Any, found: set[str], depth: int) -> None:
    if depth > _MAX_WALK or not isinstance(node, dict):
        return
    for key, kind in (("taskId", "task:"), ("contextId", "context:")):
        _add(found, kind, node.get(key))
    # A Task names its own id as "id" (next to its contextId and status; 0.3 also says
    # "kind": "task", and a Task without its status is still one to the caller's client).
    if ("status" in node and "contextId" in node) or node.get("kind") == "task":
        _add(found, "task:", node.get("id"))
    for value in node.values():
        if isinstance(value, dict):
            _walk(value, found, depth + 1)


def _add(found: set[str], kind: str, value: Any) -> None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        found.add(kind + value)
