"""Session 12, helper 1: the ownership table's store-level guarantees on both backends
(sidecar/a2a/task_owners.py, ownership_retention.py): an atomic claim several stores agree
on, an exact per-caller bound under concurrency, pruning in bounded batches that spares a
stale row used again, and the migration that adds ``used_ns`` to existing rows (used at
the upgrade: review finding F4; the PostgreSQL upgrade in test_s12_a2a_ownership_findings_store.py).

Real stores: SQLite files opened by several connections (as ``server.workers`` do) and a real
PostgreSQL server (tests/support/postgres.py) opened by several pools (as replicas do).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sidecar.a2a.ownership_retention import OwnershipRetention
from sidecar.a2a.task_owners import TOUCH_EVERY_NS, OwnershipLimit, TaskOwners
from sidecar.state import PostgresSettings, StateDb, StateSettings, open_state
from sidecar.state.migrations import CREATE_TABLE, migrations, statements
from sidecar.state.sqlite import SqliteStateDb

PEER = "a2a-peer:billing"
SUPPORT = "spiffe://demo.example/agent/support"
PLANNER = "spiffe://demo.example/agent/planner"
DAY_NS = 86400 * 10**9


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request, tmp_path) -> Iterator[Callable[[], StateDb]]:
    """Open another store on one database (a worker's or a replica's own connection)."""
    opened: list[StateDb] = []

    def open_one() -> StateDb:
        if request.param == "sqlite":
            db: StateDb = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=30)
        else:
            pg_state = request.getfixturevalue("pg_state")
            dsn_file = Path(pg_state["postgres"]["dsn_file"])
            settings = PostgresSettings(dsn_file=dsn_file)
            db = open_state(StateSettings(backend="postgres", postgres=settings))
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        db.close()


def _keys(db: StateDb) -> set[str]:
    return {r["task_id"] for r in db.query("SELECT task_id FROM a2a_task_owners")}


def test_item1_concurrent_claims_from_several_stores_have_exactly_one_winner(open_store):
    stores = [open_store() for _ in range(3)]
    rounds = 25
    barrier = threading.Barrier(4)

    def claim(i: int, who: str, store: StateDb) -> tuple[str, str]:
        barrier.wait()
        return who, TaskOwners(store).claim(PEER, who, f"context:c-{i}", 100)

    with ThreadPoolExecutor(4) as pool:
        for i in range(rounds):
            racers = [
                pool.submit(claim, i, who, stores[n % len(stores)])
                for n, who in enumerate((SUPPORT, PLANNER, SUPPORT, PLANNER))
            ]
            results = [f.result() for f in racers]
            owners = {owner for _, owner in results}
            assert len(owners) == 1, results  # every racer was told the same owner
            [owner] = owners
            assert owner in (SUPPORT, PLANNER)
    rows = stores[0].query("SELECT caller FROM a2a_task_owners WHERE agent = ?", (PEER,))
    assert len(rows) == rounds


def test_item1_the_bound_holds_exactly_under_concurrent_claims(open_store):
    stores = [open_store() for _ in range(2)]
    barrier = threading.Barrier(8)

    def claim(n: int) -> str:
        barrier.wait()
        try:
            TaskOwners(stores[n % 2]).claim(PEER, PLANNER, f"context:n-{n}", 3)
        except OwnershipLimit:
            return "limit"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))
    assert results.count("ok") == 3 and results.count("limit") == 5
    owners = TaskOwners(stores[0])
    # its own ids are still its own; another caller is not bound by it
    mine = results.index("ok")
    assert owners.claim(PEER, PLANNER, f"context:n-{mine}", 3) == PLANNER
    assert owners.claim(PEER, SUPPORT, "context:s-1", 3) == SUPPORT
    with pytest.raises(OwnershipLimit):
        owners.claim(PEER, PLANNER, "context:one-more", 3)


def test_item1_a_claim_of_anothers_context_changes_nothing(open_store):
    owners = TaskOwners(open_store())
    assert owners.claim(PEER, SUPPORT, "context:x", 10) == SUPPORT
    assert owners.claim(PEER, PLANNER, "context:x", 10) == SUPPORT
    owners.record(PEER, PLANNER, {"context:x", "task:t"})  # an answer naming it: first wins
    assert owners.owners(PEER, "t", "x") == (PLANNER, SUPPORT)


def test_item2_prune_deletes_only_unused_rows_in_bounded_batches(open_store):
    db = open_store()
    clock = {"now": 100 * DAY_NS}
    owners = TaskOwners(db, now=lambda: clock["now"])
    owners.record(PEER, SUPPORT, {f"task:old-{i}" for i in range(7)})
    owners.record("spiffe://demo.example/agent/inbound", "spiffe://x/caller", {"task:in-old"})
    clock["now"] += 3 * DAY_NS
    owners.record(PEER, SUPPORT, {"task:new", "task:old-0"})  # old-0 named again: used
    assert owners.owners(PEER, "old-1", "")[0] == SUPPORT  # matched: used
    clock["now"] += 5 * DAY_NS  # 8 days after the first rows, 5 after the uses
    cutoff = clock["now"] - 7 * DAY_NS
    first = owners.prune(cutoff, batch=2, batches=2)
    assert (first.deleted, first.more) == (4, True)  # bounded: the rest is left for later
    rest = owners.prune(cutoff, batch=2, batches=8)
    assert (rest.deleted, rest.more) == (2, False)
    assert _keys(db) == {"task:new", "task:old-0", "task:old-1"}
    assert owners.owners(PEER, "old-2", "") == ("", "")  # pruned: unknown, so refused
    assert owners.prune(cutoff).deleted == 0


def test_item2_a_stale_row_used_again_is_kept(open_store):
    db = open_store()
    owners = TaskOwners(db)
    owners.record(PEER, SUPPORT, {"task:t"})
    with db.transaction() as conn:
        conn.execute("UPDATE a2a_task_owners SET used_ns = 1")
    assert owners.owners(PEER, "t", "")[0] == SUPPORT  # used after the row went stale
    assert owners.prune(time.time_ns() - DAY_NS).deleted == 0
    assert _keys(db) == {"task:t"}


def test_item2_a_lookup_writes_its_use_at_most_once_a_minute(open_store):
    db = open_store()
    clock = {"now": 10 * DAY_NS}
    owners = TaskOwners(db, now=lambda: clock["now"])
    owners.record(PEER, SUPPORT, {"task:t"})

    def used() -> int:
        return int(db.query("SELECT used_ns FROM a2a_task_owners")[0]["used_ns"])

    clock["now"] += TOUCH_EVERY_NS // 2
    owners.owners(PEER, "t", "")
    assert used() == 10 * DAY_NS  # a read within the minute stays a read
    clock["now"] += TOUCH_EVERY_NS
    owners.owners(PEER, "t", "")
    assert used() == clock["now"]


def test_item2_the_retention_runs_when_due_and_goes_on_with_a_backlog(open_store):
    db = open_store()
    clock = {"mono": 0.0}
    now = 50 * DAY_NS
    TaskOwners(db, now=lambda: now - 8 * DAY_NS).record(
        PEER, SUPPORT, {f"task:{i}" for i in range(5000)}
    )
    TaskOwners(db, now=lambda: now).record(PEER, SUPPORT, {"task:fresh"})
    retention = OwnershipRetention(
        db, 7 * 86400, every_s=5, now=lambda: now, clock=lambda: clock["mono"]
    )
    passes = []
    while (pruned := retention.run_if_due()) is not None:
        passes.append(pruned.deleted)  # a backlog: the next sweep goes on at once
    assert sum(passes) == 5000 and len(passes) >= 2 and max(passes) <= 8 * 500
    assert _keys(db) == {"task:fresh"}
    clock["mono"] += 4.9
    assert retention.run_if_due() is None  # not due yet
    clock["mono"] += 0.2
    assert retention.run_if_due() is not None


def test_item2_f4_the_migration_marks_existing_rows_used_at_the_upgrade(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute(CREATE_TABLE)
    for migration in migrations("sqlite")[:5]:  # a store from before used_ns existed
        for statement in statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, 1)", (migration.version, migration.name)
        )
    conn.execute(
        "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns) VALUES (?,?,?,?)",
        (PEER, "task:legacy", SUPPORT, 12345),
    )
    conn.commit()
    conn.close()
    before = time.time_ns()
    db = SqliteStateDb(path)
    after = time.time_ns()
    try:
        [row] = db.query("SELECT used_ns FROM a2a_task_owners")
        # made long ago, its use never recorded: used at the upgrade (SQLite's clock: ms)
        assert before - 2_000_000 <= row["used_ns"] <= after + 2_000_000
        assert TaskOwners(db).prune(before - 7 * DAY_NS).deleted == 0  # one full retention
        assert TaskOwners(db).prune(after + 2_000_001).deleted == 1
    finally:
        db.close()
