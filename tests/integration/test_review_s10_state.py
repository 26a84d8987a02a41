"""Review s10 of the state store's work without waiting (docs/state.md "Work without
waiting"; docs/a2a.md "Provenance").

2: no fsync on the event loop from a WAL restart: the WAL's header (its checkpoint sequence
   and salts) is never rewritten by work done without waiting; the connection checkpoints
   and restarts the WAL on a thread, and the WAL stays bounded with SQLite's own automatic
   checkpoint off.
4: ``StateBusy`` (redo the work on the state thread) only when nothing inside committed;
   after a commit a plain ``StateError``; nesting refused.
5: a busy timeout that cannot be restored leaves the body's result standing, turns the fast
   path off for the connection, and the thread path restores it before it waits.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from sidecar.state import SqliteStateDb, StateBusy, StateError
from sidecar.state.offloop import STATE_THREAD
from sidecar.state.sqlite import CHECKPOINT_EVERY
from tests.integration.test_a2a_latency3 import CALLER, _binder

BOUND_S = 30.0
NEVER_S = 3600.0  # a busy timeout no test may wait out
INSERT = "INSERT INTO tasks (id, owner, intent, started_ns, expires_ns) VALUES (?,?,?,?,?)"


def _insert(db: SqliteStateDb, task_id: str, intent: str = "i", *, durable: bool = False) -> None:
    with db.transaction(durable=durable) as conn:
        conn.execute(INSERT, (task_id, "spiffe://demo.example/agent/billing", intent, 1, 2))


def _ids(db: SqliteStateDb) -> list[str]:
    return [r[0] for r in db.query("SELECT id FROM tasks ORDER BY id")]


def _wal(db: SqliteStateDb) -> Path:
    return Path(f"{db.path}-wal")


def _header(db: SqliteStateDb) -> bytes:
    """The WAL header (32 bytes): a writer that restarts the WAL rewrites it (the checkpoint
    sequence at 12-16 goes up, new salts) and fsyncs it, even at ``synchronous=NORMAL``."""
    with _wal(db).open("rb") as f:
        header = f.read(32)
    assert len(header) == 32, "the WAL has no header yet: its first writer would write it"
    return header


def _sequence(header: bytes) -> int:
    return struct.unpack(">I", header[12:16])[0]


# --- 2: no WAL restart (its header fsync) on the event loop ---------------------------------


def test_review_s10_state_2_a_write_without_waiting_after_a_checkpoint_keeps_the_wal_header(
    tmp_path,
):
    """The state thread's checkpoint copies the whole WAL back; the next write restarts the
    WAL. That writer is the state thread (a small non-durable write right after), not the
    loop: the loop's write leaves the header, checkpoint sequence included, as it was (the
    old code: sequence 0 -> 1 in the loop's write, with its fdatasync)."""
    db = SqliteStateDb(tmp_path / "state.db")
    with db.without_waiting():
        _insert(db, "t-0")
    STATE_THREAD.submit(db._checkpoint).result(BOUND_S)
    before = _header(db)
    for i in range(1, 4):
        with db.without_waiting():
            _insert(db, f"t-{i}")
        assert _header(db) == before
    assert _sequence(_header(db)) == _sequence(before)
    assert _ids(db) == ["t-0", "t-1", "t-2", "t-3"]
    db.close()


def test_review_s10_state_2_the_first_write_after_a_reopen_does_not_write_the_wal_header(
    tmp_path,
):
    """A restart of the sidecar: closing the last connection checkpoints and removes the WAL;
    the new connection writes the header on opening, so the first inbound task's open (on
    the loop) does not (the old code: its migration check wrote nothing, the loop did)."""
    db = SqliteStateDb(tmp_path / "state.db")
    _insert(db, "t-0")
    db.close()
    assert not _wal(db).exists() or _wal(db).stat().st_size == 0
    db = SqliteStateDb(tmp_path / "state.db")
    before = _header(db)
    with db.without_waiting():
        _insert(db, "t-1")
    assert _header(db) == before
    db.close()


def test_review_s10_state_2_commits_on_a_thread_checkpoint_and_restart_the_wal_there(tmp_path):
    """SQLite's automatic checkpoint stays off (a commit on the loop crossing its threshold
    would checkpoint there): the CHECKPOINT_EVERY-th commit on a thread checkpoints and
    restarts the WAL itself; the loop's write after it keeps the header."""
    db = SqliteStateDb(tmp_path / "state.db")
    assert db.query("PRAGMA wal_autocheckpoint")[0][0] == 0
    main = tmp_path / "state.db"
    base = main.stat().st_size
    first = _sequence(_header(db))
    for i in range(CHECKPOINT_EVERY):
        _insert(db, f"t-{i:04}", "x" * 8000)
    assert main.stat().st_size > base  # checkpointed on this thread
    after = _header(db)
    assert _sequence(after) > first  # ... and the WAL restarted here
    with db.without_waiting():
        _insert(db, "t-loop")
    assert _header(db) == after
    db.close()


def test_review_s10_state_2_the_wal_stays_bounded_over_many_commits_on_a_thread(tmp_path):
    """With the automatic checkpoint off, the connection's own checkpoints bound the WAL:
    over 6 x CHECKPOINT_EVERY commits (~2 pages each) the WAL file never grows past what
    the first CHECKPOINT_EVERY commits needed, bar a few pages (it is reused from its
    start), where without them it would be ~6 times that."""
    db = SqliteStateDb(tmp_path / "state.db")
    sizes = []
    for i in range(6 * CHECKPOINT_EVERY):
        _insert(db, f"t-{i:05}", "x" * 5000)
        sizes.append(_wal(db).stat().st_size)
    high_water = max(sizes[:CHECKPOINT_EVERY])
    # a later cycle may need a few pages more (a deeper b-tree): far from 6 cycles' worth
    assert max(sizes) < 1.5 * high_water, (high_water, max(sizes))
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 6 * CHECKPOINT_EVERY
    db.close()


# --- 4: StateBusy only when nothing was written ---------------------------------------------


def test_review_s10_state_4_a_durable_commit_after_a_commit_is_not_state_busy(tmp_path):
    """Hostile: a non-durable insert, then a durable update. The update is refused, but the
    insert is committed: the caller must not redo the work on the state thread (the old
    code: StateBusy, and the redo failed with UNIQUE constraint failed)."""
    db = SqliteStateDb(tmp_path / "state.db")
    with pytest.raises(StateError) as raised, db.without_waiting():
        _insert(db, "t-1")
        db.write("UPDATE tasks SET calls = calls + 1 WHERE id = 't-1'", durable=True)
    assert not isinstance(raised.value, StateBusy)
    assert "after 1 commit(s)" in str(raised.value)
    assert _ids(db) == ["t-1"]
    assert db.query("PRAGMA busy_timeout")[0][0] == 1000  # restored all the same
    db.close()


def test_review_s10_state_4_another_writer_after_a_commit_is_not_state_busy(tmp_path):
    """Race: another process takes the write lock between two commits of the block. The
    second is SQLITE_BUSY at once; the error is a plain StateError (one commit stands)."""
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        with pytest.raises(StateError) as raised, db.without_waiting():
            _insert(db, "t-1")
            other.execute("BEGIN IMMEDIATE")
            _insert(db, "t-2")
        assert not isinstance(raised.value, StateBusy)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert _ids(db) == ["t-1"]
    db.close()


def test_review_s10_state_4_a_write_through_query_counts_as_a_commit(tmp_path):
    """A write sent through ``query()`` commits on its own: a refusal after it is not
    StateBusy either."""
    db = SqliteStateDb(tmp_path / "state.db")
    with pytest.raises(StateError) as raised, db.without_waiting():
        db.query(INSERT, ("t-1", "o", "i", 1, 2))
        _insert(db, "t-2", durable=True)
    assert not isinstance(raised.value, StateBusy)
    assert _ids(db) == ["t-1"]
    db.close()


def test_review_s10_state_4_a_refusal_before_any_commit_is_still_state_busy(tmp_path):
    """Reads, then the durable commit refused before BEGIN: nothing written, StateBusy."""
    db = SqliteStateDb(tmp_path / "state.db")
    with pytest.raises(StateBusy), db.without_waiting():
        db.query("SELECT count(*) FROM tasks")
        _insert(db, "t-1", durable=True)
    assert _ids(db) == []
    db.close()


def test_review_s10_state_4_nesting_is_refused_and_leaves_the_outer_block_intact(tmp_path):
    """A nested block is refused (not StateBusy: there is no thread to redo it on from
    inside); the outer block keeps its busy timeout of 0 and its durable guard (the old
    code: the inner exit restored the waiting pragmas and cleared the guard early)."""
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    with db.without_waiting():
        with pytest.raises(StateError) as raised, db.without_waiting():
            pass
        assert not isinstance(raised.value, StateBusy)
        assert "does not nest" in str(raised.value)
        assert db.query("PRAGMA busy_timeout")[0][0] == 0
        with pytest.raises(StateBusy):
            _insert(db, "t-durable", durable=True)
        _insert(db, "t-1")
    assert db.query("PRAGMA busy_timeout")[0][0] == int(NEVER_S * 1000)
    assert _ids(db) == ["t-1"]
    db.close()


# --- 5: a busy timeout that cannot be restored ----------------------------------------------


class _FailingPragma:
    """The real connection, with one statement failing ``times`` times (SQLite itself does
    not fail a PRAGMA on demand: the fault is injected, everything else is real)."""

    def __init__(self, conn: sqlite3.Connection, statement: str, times: int) -> None:
        self._conn, self._statement, self.left = conn, statement, times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == self._statement and self.left > 0:
            self.left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)


def test_review_s10_state_5_a_failed_restore_keeps_the_committed_result(tmp_path, caplog):
    """The restore fails: the body's commit is returned as done (the old code raised a
    StateError though the task was written, with busy_timeout and wal_autocheckpoint left
    at 0); the failure is logged; work without waiting is off for this connection
    (StateBusy, nothing written); the thread path restores the busy timeout before it
    waits, failing closed while it cannot."""
    db = SqliteStateDb(tmp_path / "state.db", busy_timeout_s=NEVER_S)
    real = db._conn
    db._conn = _FailingPragma(real, f"PRAGMA busy_timeout={int(NEVER_S * 1000)}", times=2)
    with caplog.at_level(logging.WARNING, logger="sidecar.state.sqlite"), db.without_waiting():
        _insert(db, "t-1")
    assert [r[0] for r in real.execute("SELECT id FROM tasks")] == ["t-1"]
    assert any("busy timeout not restored" in r.getMessage() for r in caplog.records)
    assert real.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # left by the failure

    ran = []
    with pytest.raises(StateBusy), db.without_waiting():
        ran.append(1)
    assert ran == []

    with pytest.raises(StateError):  # the second failure: fails closed, writes nothing
        _insert(db, "t-2")
    _insert(db, "t-2")  # restored first, then committed
    assert real.execute("PRAGMA busy_timeout").fetchone()[0] == int(NEVER_S * 1000)
    assert real.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert _ids(db) == ["t-1", "t-2"]
    db._conn = real
    db.close()


def test_review_s10_state_5_a_failed_restore_does_not_replace_the_bodys_error(tmp_path):
    """The body fails on its own (a constraint) and the restore fails too: the caller sees
    the body's error, not the restore's (the old code: "disk I/O error" instead)."""
    db = SqliteStateDb(tmp_path / "state.db")
    _insert(db, "t-1")
    real = db._conn
    db._conn = _FailingPragma(real, "PRAGMA busy_timeout=1000", times=1)
    with pytest.raises(StateError) as raised, db.without_waiting():
        _insert(db, "t-1")
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert "UNIQUE" in str(raised.value)
    db._conn = real
    db.close()


def test_review_s10_state_5_the_binder_takes_the_thread_once_the_fast_path_is_off(tmp_path):
    """End to end through the binder: the open whose restore fails is returned as opened;
    the next open runs on the state thread (busy timeout restored first); each exactly once."""
    binder, db = _binder(tmp_path)
    real = db._conn
    db._conn = _FailingPragma(real, f"PRAGMA busy_timeout={int(BOUND_S * 1000)}", times=1)

    async def scenario() -> list[Any]:
        return [
            await asyncio.wait_for(binder.open_task(CALLER, None, f"refund: {i}"), BOUND_S)
            for i in range(2)
        ]

    first, second = asyncio.run(scenario())
    assert sorted(_ids(db)) == sorted([first.id, second.id])
    assert real.execute("PRAGMA busy_timeout").fetchone()[0] == int(BOUND_S * 1000)
    db._conn = real
    db.close()
