"""The embedded state store: one SQLite database in WAL mode under ``state.dir``.

The default, for one sidecar (or its ``server.workers`` processes on one host). Writes are
small; one lock serialises them. A transaction is ``durable`` by default (``synchronous=FULL``:
an approval's use or a task's end survives power loss); counters are not (``NORMAL``: they
survive a crash of the sidecar, and a power cut may lose the last few counts), which saves a
disk flush on every call.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sidecar.state.base import Row, StateDb
from sidecar.state.errors import StateBusy, StateError
from sidecar.state.migrations import CREATE_TABLE, migrations, pending, statements
from sidecar.state.offloop import STATE_THREAD

__all__ = ["SqliteStateDb"]

log = logging.getLogger(__name__)

# SQLite's own automatic checkpoint is off on this connection (it would run in whichever commit
# crossed its threshold, the event loop's too): the connection checkpoints itself after this many
# commits, on a thread (inline on the committing thread, or handed to the state thread by work
# done without waiting). An inbound task's open writes ~6 WAL pages, a counter 1-3: ~1000 pages,
# the cadence of SQLite's default threshold.
CHECKPOINT_EVERY = 160
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # primary codes (the low byte)


class SqliteStateDb(StateDb):
    """A connection to ``<dir>/state.db``; the schema migrated when it opens."""

    backend = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 1.0) -> None:
        """``busy_timeout_s``: how long a write waits for a lock another process holds
        before the call that needed it fails with ``state_unavailable`` (it runs in a
        thread, never on the event loop)."""
        self.path = path
        self._lock = threading.RLock()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._commits = 0  # since this connection last checkpointed
        self._not_waiting = False  # inside without_waiting (read and set under the lock)
        self._committed = 0  # commits inside the current without_waiting block
        self._fast = True  # off once the busy timeout could not be restored after the block
        self._unrestored = False  # the busy timeout to restore before the next transaction
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
            )
            self._conn.row_factory = sqlite3.Row
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StateError(f"{path}: SQLite refused WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")  # see CHECKPOINT_EVERY
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        self.schema_version = self._migrate()
        self._checkpoint()  # the WAL's header written now, not by a first write on the loop

    @property
    def description(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def without_waiting(self) -> Iterator[None]:
        """The work inside runs on the calling thread (the event loop: no thread hop) only if
        it need not wait: the connection free (else the state thread is using it), SQLite's
        locks free (busy timeout 0: another process's write lock is ``SQLITE_BUSY`` at once),
        no durable commit, no checkpoint and no WAL restart (their fsync: the state thread
        does both). :class:`StateBusy` only when nothing inside committed (the caller redoes
        the work on the state thread); a refusal after a commit is a plain
        :class:`StateError` (redoing it would write twice). Does not nest."""
        if not self._lock.acquire(blocking=False):
            raise StateBusy(f"{self.path}: the state thread is using the database")
        try:
            if self._not_waiting:
                raise StateError(f"{self.path}: work without waiting does not nest")
            if not self._fast:
                raise StateBusy(f"{self.path}: work without waiting is off for this connection")
            try:
                self._conn.execute("PRAGMA busy_timeout=0")
            except sqlite3.Error as exc:
                self._restore_busy_timeout()
                raise StateBusy(f"{self.path}: {exc}") from exc
            self._not_waiting, self._committed = True, 0
            try:
                yield
            except StateError as exc:
                refusal = self._refusal(exc)
                if refusal is exc:
                    raise
                raise refusal from exc
            finally:
                self._not_waiting = False
                self._restore_busy_timeout()
                if self._commits >= CHECKPOINT_EVERY:
                    self._commits = 0
                    with contextlib.suppress(RuntimeError):  # shut down: close checkpoints
                        STATE_THREAD.submit(self._checkpoint)
        finally:
            self._lock.release()

    def _refusal(self, exc: StateError) -> StateError:
        """What the body's error becomes: ``StateBusy`` (run it on the state thread) only if
        it was a wait refused and nothing committed yet."""
        code = getattr(exc.__cause__, "sqlite_errorcode", None)  # None: not SQLite's
        busy = isinstance(exc, StateBusy) or (isinstance(code, int) and code & 0xFF in _BUSY)
        if not busy:
            return exc
        if self._committed:
            return StateError(
                f"{self.path}: {exc} after {self._committed} commit(s) made without waiting"
                " (not retried: it would write them twice)"
            )
        return exc if isinstance(exc, StateBusy) else StateBusy(f"{self.path}: {exc.__cause__}")

    def _restore_busy_timeout(self) -> None:
        """After work without waiting; never raises (the body's result stands). On failure
        the connection stops running work without waiting, and the next transaction (on a
        thread) restores the busy timeout before it begins, or fails closed."""
        try:
            self._conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        except sqlite3.Error as exc:
            self._fast, self._unrestored = False, True
            log.warning(
                "state busy timeout not restored; work without waiting now takes the thread",
                extra={"error": str(exc), "path": str(self.path)},
            )

    def _restored(self) -> None:
        """Outside work without waiting, the busy timeout a failed restore left at 0 set back
        first (``sqlite3.Error`` if it still fails: the call fails closed)."""
        if self._unrestored and not self._not_waiting:
            self._conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            self._unrestored = False

    def _counted(self) -> None:
        """One commit made; past CHECKPOINT_EVERY, a checkpoint on this (non-loop) thread."""
        self._commits += 1
        if self._not_waiting:
            self._committed += 1
        elif self._commits >= CHECKPOINT_EVERY:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """The WAL copied back into the database (PASSIVE: never waits for readers) and, if
        all of it was, restarted here with one small non-durable write: the writer that
        restarts the WAL fsyncs its new header (even at ``synchronous=NORMAL``), and that
        must not be the event loop's next write."""
        try:
            with self._lock:
                self._commits = 0
                self._restored()
                busy, frames, copied = self._conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                if busy == 0 and frames == copied:
                    self._restart_wal()
        except sqlite3.Error as exc:  # the next CHECKPOINT_EVERY commits try again
            log.warning("state checkpoint failed", extra={"error": str(exc)})

    def _restart_wal(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version={version}")  # rewrites page 1: one WAL frame
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> int:
        shipped = migrations("sqlite")
        with self.transaction() as conn:
            conn.execute(CREATE_TABLE)
            applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for migration in pending(applied, shipped, str(self.path)):
                for statement in statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time_ns()),
                )
        return len(shipped)

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE``: the write lock is taken first, so the reads that follow see
        what no other writer can change before the commit."""
        with self._lock:
            if durable and self._not_waiting:  # a durable commit waits for the disk
                raise StateBusy(f"{self.path}: a durable commit waits for the disk")
            try:
                self._restored()
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StateError(f"{self.path}: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StateError(f"{self.path}: cannot commit: {exc}") from exc
            self._counted()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            before = self._conn.total_changes
            try:
                self._restored()
                rows = self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc
            if self._conn.total_changes != before and not self._conn.in_transaction:
                self._counted()  # a write sent through query() committed on its own
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()
