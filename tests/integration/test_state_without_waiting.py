"""``StateDb.without_waiting`` (issue 34 "Measure", round 3, item 1): state work on the
calling thread (the event loop) only where it need not wait, never a checkpoint's fsync
there; else ``StateBusy`` with nothing written (docs/a2a.md "Measured").
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sidecar.state import PostgresSettings, SqliteStateDb, StateBusy, StateSettings
from sidecar.state.offloop import STATE_THREAD
from sidecar.state.opening import open_state
from sidecar.state.sqlite import CHECKPOINT_EVERY
from tests.support.settle import poll

BOUND_S = 30.0
# A store that would wait this long for a lock: a test it made wait would hang, not pass.
NEVER_S = 3600.0
BLOB = "x" * 60_000  # ~15 pages of WAL per insert


def _insert(db: SqliteStateDb, task_id: str, intent: str = "i") -> None:
    with db.transaction(durable=False) as conn:
        conn.execute(
            "INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) VALUES (?,?,?,?,?)",
            (task_id, "spiffe://demo.example/agent/billing", intent, 1, 2),
        )


def _pragmas(db: SqliteStateDb) -> tuple[int, int]:
    return (
        db.query("PRAGMA busy_timeout")[0][0],
        db.query("PRAGMA wal_autocheckpoint")[0][0],
    )


def test_s10_a2a_1_work_without_waiting_commits_on_the_calling_thread(tmp_path):
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    with db.without_waiting():
        _insert(db, "t-1")
    assert [r[0] for r in db.query("SELECT id FROM tasks")] == ["t-1"]
    assert _pragmas(db) == (int(NEVER_S * 1000), 0)  # restored
    db.close()


def test_s10_a2a_1_another_processes_write_lock_is_busy_at_once_nothing_written(tmp_path):
    """Hostile: another writer holds the lock. With a busy timeout of an hour, a store that
    waited would hang this test; it raises StateBusy, writes nothing, restores its pragmas,
    and the same work succeeds once the lock is free."""
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateBusy), db.without_waiting():
            _insert(db, "t-1")
        assert _pragmas(db) == (int(NEVER_S * 1000), 0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert db.query("SELECT id FROM tasks") == []
    with db.without_waiting():
        _insert(db, "t-1")
    assert [r[0] for r in db.query("SELECT id FROM tasks")] == ["t-1"]
    db.close()


def test_s10_a2a_1_the_connection_in_use_by_another_thread_is_busy(tmp_path):
    """Race: the state thread is inside a transaction: the caller does not wait for it."""
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction():
            inside.set()
            release.wait(BOUND_S)

    done = STATE_THREAD.submit(hold)
    assert inside.wait(BOUND_S)
    try:
        with pytest.raises(StateBusy), db.without_waiting():
            _insert(db, "t-1")
    finally:
        release.set()
    done.result(BOUND_S)
    assert db.query("SELECT id FROM tasks") == []
    db.close()


def test_s10_a2a_1_a_failure_that_is_not_busy_is_not_retried_elsewhere(tmp_path):
    """A constraint violation is the work's own error, not a reason to try the thread."""
    db = SqliteStateDb(tmp_path / "state.db")
    _insert(db, "t-1")
    with pytest.raises(Exception) as raised, db.without_waiting():
        _insert(db, "t-1")
    assert not isinstance(raised.value, StateBusy)
    assert _pragmas(db) == (1000, 0)
    db.close()


def test_s10_a2a_1_a_durable_commit_is_never_made_without_waiting(tmp_path):
    """A durable commit waits for the disk (fsync): refused before BEGIN, nothing written;
    the same commit on its own (the state thread's way) goes through."""
    db = SqliteStateDb(tmp_path / "state.db")
    with pytest.raises(StateBusy), db.without_waiting():
        db.write(
            "INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) VALUES (?,?,?,?,?)",
            ("t-1", "o", "i", 1, 2),
        )
    assert db.query("SELECT id FROM tasks") == []
    db.write(
        "INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) VALUES (?,?,?,?,?)",
        ("t-1", "o", "i", 1, 2),
    )
    assert [r[0] for r in db.query("SELECT id FROM tasks")] == ["t-1"]
    db.close()


def test_s10_a2a_1_no_checkpoint_without_waiting_the_state_thread_checkpoints(tmp_path):
    """A checkpoint (its fsync) never runs in work done without waiting: past SQLite's
    default 1000-page threshold the database file has not grown; the CHECKPOINT_EVERY-th
    commit hands a checkpoint to the state thread, which copies the WAL back. Control:
    CHECKPOINT_EVERY ordinary transactions do checkpoint (on their own thread)."""
    control = SqliteStateDb(tmp_path / "control" / "state.db")
    base = (tmp_path / "control" / "state.db").stat().st_size
    for i in range(CHECKPOINT_EVERY):
        _insert(control, f"t-{i}", BLOB)
    assert (tmp_path / "control" / "state.db").stat().st_size > base  # the test can see one
    control.close()

    db = SqliteStateDb(tmp_path / "state.db")
    main, wal = tmp_path / "state.db", Path(f"{tmp_path / 'state.db'}-wal")
    base = main.stat().st_size
    for i in range(CHECKPOINT_EVERY - 1):
        with db.without_waiting():
            _insert(db, f"t-{i}", BLOB)
    assert wal.stat().st_size > 1000 * 4096  # past SQLite's default threshold
    assert main.stat().st_size == base  # nothing copied back: no checkpoint ran
    with db.without_waiting():
        _insert(db, "t-last", BLOB)
    poll(lambda: main.stat().st_size > base, what="the state thread checkpointed")
    assert db.query("SELECT count(*) FROM tasks")[0][0] == CHECKPOINT_EVERY
    db.close()


def test_s10_a2a_1_postgresql_always_waits_for_its_server(pg_state, tmp_path):
    """A networked store never runs on the loop: StateBusy before any work."""
    db = open_state(
        StateSettings(
            backend="postgres",
            postgres=PostgresSettings(dsn_file=Path(pg_state["postgres"]["dsn_file"])),
        )
    )
    ran = []
    try:
        with pytest.raises(StateBusy), db.without_waiting():
            ran.append(1)
    finally:
        db.close()
    assert ran == []
