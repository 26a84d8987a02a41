"""Context rows recorded before keys were folded, moved to their folded key (review s12 R3).

A row recorded as ``context:Ticket-7`` (before context_key.py) is not found by a lookup of
``ticket-7``: another caller could claim the folded key and from then on own the first
caller's conversation (the folded row is looked up first). Folding (NFKC, case folding) is
not expressible in SQL, so no SQL migration can move these rows: this pass does, in Python,
run once per process by the ownership sweep before its first prune (ownership_retention.py).
It is idempotent (a store with no unfolded row costs one read) and safe beside live claims
and other replicas: each folded key is settled in one transaction by an upsert that keeps the
earliest owner (``created_ns``; the row already under the folded key on a tie), then the
unfolded variants are deleted.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sidecar.a2a.context_key import context_key
from sidecar.state import StateDb

__all__ = ["rekey_contexts"]

log = logging.getLogger(__name__)

_PREFIX = "context:"
# Unfolded variants of one key settled per transaction (bounds the statement and the lock).
_BATCH = 200


def rekey_contexts(db: StateDb) -> int:
    """Move every unfolded ``context:`` row of ``a2a_task_owners`` to its folded key; the
    number of unfolded rows removed (moved or dropped on a collision)."""
    rows = db.query(
        "SELECT agent, task_id FROM a2a_task_owners WHERE task_id LIKE ?", (_PREFIX + "%",)
    )
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        key = str(row["task_id"])
        if not key.startswith(_PREFIX):  # SQLite's LIKE ignores case
            continue
        folded = _PREFIX + context_key(key[len(_PREFIX) :])
        if folded != key:
            groups[(str(row["agent"]), folded)].append(key)
    moved = sum(
        _settle(db, agent, folded, raw[start : start + _BATCH])
        for (agent, folded), raw in groups.items()
        for start in range(0, len(raw), _BATCH)
    )  # a batch at a time: the earliest owner still wins, one batch after another
    if moved:
        log.info("A2A context ownership rows re-keyed to their folded key", extra={"rows": moved})
    return moved


def _settle(db: StateDb, agent: str, folded: str, raw: list[str]) -> int:
    """One folded key: its earliest owner kept under it, the unfolded rows deleted."""
    with db.transaction() as conn:
        found = conn.execute(
            _among("SELECT task_id, caller, created_ns, used_ns", raw), (agent, *raw)
        ).fetchall()
        if not found:
            return 0  # settled meanwhile (another replica's pass)
        first = min(found, key=lambda r: (int(r["created_ns"]), str(r["task_id"])))
        used = max(int(r["used_ns"]) for r in found)
        # Earliest wins; a row already under the folded key wins a tie, and keeps its own
        # last use if later. ON CONFLICT: a claim racing this pass cannot make it fail.
        conn.execute(
            "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
            "VALUES (?,?,?,?,?) ON CONFLICT (agent, task_id) DO UPDATE SET "
            "caller = CASE WHEN excluded.created_ns < a2a_task_owners.created_ns "
            "THEN excluded.caller ELSE a2a_task_owners.caller END, "
            "created_ns = CASE WHEN excluded.created_ns < a2a_task_owners.created_ns "
            "THEN excluded.created_ns ELSE a2a_task_owners.created_ns END, "
            "used_ns = CASE WHEN excluded.used_ns > a2a_task_owners.used_ns "
            "THEN excluded.used_ns ELSE a2a_task_owners.used_ns END",
            (agent, folded, str(first["caller"]), int(first["created_ns"]), used),
        )
        keys = [str(r["task_id"]) for r in found]
        gone = conn.execute(_among("DELETE", keys), (agent, *keys)).rowcount
    return max(gone, 0)


def _among(verb: str, keys: list[str]) -> str:
    """``verb`` over one agent's rows whose key is one of ``keys`` (bound: placeholders only)."""
    marks = ",".join("?" * len(keys))
    return f"{verb} FROM a2a_task_owners WHERE agent = ? AND task_id IN ({marks})"
