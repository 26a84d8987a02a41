"""The sidecar's durable state: one SQLite database in WAL mode under ``state.dir``.

Approvals and tasks live here so that a restart loses no pending approval and can never make
a used approval usable again. Writes are small; one lock serialises them. A transaction is
``durable`` by default (``synchronous=FULL``: an approval's use or a task's end survives power
loss); the per-call task counter is not (``NORMAL``: it survives a crash of the sidecar, and a
power cut may lose the last few counts), which saves a disk flush on every call.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = ["StateDb", "StateError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, subject);
CREATE INDEX IF NOT EXISTS approvals_by_digest ON approvals (digest, state);
CREATE INDEX IF NOT EXISTS approvals_by_task ON approvals (task_id, state);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    intent TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT NOT NULL DEFAULT '',
    calls INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (ended_ns, expires_ns);
CREATE TABLE IF NOT EXISTS usage (
    subject TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, day)
);
CREATE TABLE IF NOT EXISTS mcp_pins (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    pinned_ns INTEGER NOT NULL,
    pinned_by TEXT NOT NULL
);
"""


class StateError(SidecarError):
    """The state database cannot be opened or written; calls that need it fail closed."""


class StateDb:
    """A connection to ``<dir>/state.db`` shared by the approvals and task stores."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 1.0) -> None:
        """``busy_timeout_s``: how long a write waits for a lock another process holds
        before the call that needed it fails with ``state_unavailable`` (it runs in a
        thread, never on the event loop)."""
        self.path = path
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
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic unit (``BEGIN IMMEDIATE``): read-check-write without a race."""
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

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
