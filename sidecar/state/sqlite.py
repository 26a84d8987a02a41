"""The embedded state store: one SQLite database in WAL mode under ``state.dir``.

The default, for one sidecar (or its ``server.workers`` processes on one host). Writes are
small; one lock serialises them. A transaction is ``durable`` by default (``synchronous=FULL``:
an approval's use or a task's end survives power loss); counters are not (``NORMAL``: they
survive a crash of the sidecar, and a power cut may lose the last few counts), which saves a
disk flush on every call.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sidecar.state.base import Row, StateDb
from sidecar.state.errors import StateError
from sidecar.state.migrations import CREATE_TABLE, migrations, pending, statements

__all__ = ["SqliteStateDb"]


class SqliteStateDb(StateDb):
    """A connection to ``<dir>/state.db``; the schema migrated when it opens."""

    backend = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 1.0) -> None:
        """``busy_timeout_s``: how long a write waits for a lock another process holds
        before the call that needed it fails with ``state_unavailable`` (it runs in a
        thread, never on the event loop)."""
        self.path = path
        self._lock = threading.RLock()
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
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        self.schema_version = self._migrate()

    @property
    def description(self) -> str:
        return str(self.path)

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
            try:
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

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
