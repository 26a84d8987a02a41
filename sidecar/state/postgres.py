"""The fleet state store: PostgreSQL, shared by every replica (psycopg 3 and its pool).

Guarantees match the SQLite store's, across processes and hosts: read-check-write
transactions lock the rows they read (``SELECT ... FOR UPDATE``), so an approval is used once
and a budget reservation sees every other one; changes other replicas wait on are announced
with ``NOTIFY`` on commit and heard by :class:`ChangeFeed`.

The database unreachable: the first call that finds out fails with ``state_unavailable``,
and so does every call needing state after it, at once, without waiting on a connection;
a probe thread retries and, when the server answers again, drops the dead pooled connections
and lets calls through. Counters commit with ``synchronous_commit = off`` (a crash of the
database server may lose the last few counts, never a decision); decisions commit durably.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg_pool
from psycopg.rows import dict_row

from sidecar.state.base import Row, StateDb
from sidecar.state.errors import StateError
from sidecar.state.feed import ChangeFeed
from sidecar.state.migrations import (
    CREATE_TABLE,
    LOCK_KEY,
    migrations,
    pending,
    statements,
)
from sidecar.state.settings import PostgresSettings

__all__ = ["PostgresStateDb", "describe_dsn"]

log = logging.getLogger(__name__)

CHANNEL = "agent_sidecar_state"


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for messages: never its password. Raises
    :class:`StateError` (without echoing the DSN) when it is not a libpq connection string."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        raise StateError(
            "the PostgreSQL DSN is not a valid libpq connection string (URI or key=value)"
        ) from None
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    return f"postgresql://{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _Conn:
    """A pooled connection speaking the stores' ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(_pg(sql), tuple(params))

    def executemany(self, sql: str, params: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg(sql), params)


def _connection_lost(exc: psycopg.Error, conn: psycopg.Connection[Any] | None) -> bool:
    """Whether ``exc`` means the server is gone (not a timeout or a bad statement)."""
    if conn is not None and conn.broken:
        return True
    state = exc.sqlstate or ""
    if not state:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in ("57P01", "57P02", "57P03")


class PostgresStateDb(StateDb):
    backend = "postgres"
    for_update = " FOR UPDATE"

    def __init__(self, settings: PostgresSettings, dsn: str) -> None:
        self._settings = settings
        self._where = describe_dsn(dsn)
        self._kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(settings.connect_timeout_s)),
            "application_name": "agent-sidecar",
            "options": (
                f"-c statement_timeout={settings.statement_timeout_ms} "
                f"-c lock_timeout={settings.statement_timeout_ms} "
                "-c synchronous_commit=off"
            ),
        }
        self._dsn = dsn
        self._down_since: float | None = None
        self._down_lock = threading.Lock()
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        self.schema_version = self._migrate()
        self._pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=1,
            max_size=settings.pool_size,
            kwargs={**self._kwargs, "autocommit": True, "row_factory": dict_row},
            timeout=settings.connect_timeout_s,
            name="agent-sidecar-state",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=settings.connect_timeout_s)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise StateError(f"{self._where}: cannot open a connection pool in time") from exc
        self.feed = ChangeFeed(
            lambda: psycopg.connect(dsn, autocommit=True, **self._kwargs),
            CHANNEL,
            retry_s=settings.retry_interval_s,
        )

    @property
    def description(self) -> str:
        return self._where

    @property
    def has_feed(self) -> bool:
        return True

    @property
    def available(self) -> bool:
        return self._down_since is None

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:
            raise StateError(f"{self._where}: cannot connect: {_reason(exc)}") from exc

    def _migrate(self) -> int:
        """Apply the missing migrations under an advisory lock every replica takes."""
        shipped = migrations("postgres")
        with self._connect() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    conn.execute(CREATE_TABLE)
                    applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                    todo = pending(applied, shipped, self._where)
                    for migration in todo:
                        for statement in statements(migration.sql):
                            conn.execute(statement)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, applied_ns) "
                            "VALUES (%s, %s, %s)",
                            (migration.version, migration.name, time.time_ns()),
                        )
            except psycopg.Error as exc:
                raise StateError(f"{self._where}: cannot migrate: {_reason(exc)}") from exc
        if todo:
            log.info(
                "state schema migrated",
                extra={"versions": [m.version for m in todo], "store": self._where},
            )
        return len(shipped)

    @contextlib.contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        down_since = self._down_since
        if down_since is not None:
            raise StateError(
                f"{self._where}: the state database has been unreachable for "
                f"{time.monotonic() - down_since:.1f}s; retrying in the background"
            )
        conn = None
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            self._mark_down("no connection in time")
            raise StateError(f"{self._where}: no database connection in time") from exc
        except psycopg.Error as exc:
            if _connection_lost(exc, conn):
                self._mark_down(_reason(exc))
            raise StateError(f"{self._where}: {_reason(exc)}") from exc

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[_Conn]:
        with self._checkout() as conn, conn.transaction():
            if durable:
                conn.execute("SET LOCAL synchronous_commit = on")
            yield _Conn(conn)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._checkout() as conn:
            return conn.execute(_pg(sql), tuple(params)).fetchall()

    def write(self, sql: str, params: Sequence[object] = (), *, durable: bool = True) -> list[Row]:
        if durable:
            return super().write(sql, params, durable=True)
        # Autocommit, and the connection's synchronous_commit=off: one round trip.
        with self._checkout() as conn:
            cursor = conn.execute(_pg(sql), tuple(params))
            return cursor.fetchall() if cursor.description else []

    def lock(self, conn: Any, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def notify(self, conn: Any, kind: str, key: str) -> None:
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, self.feed.payload(kind, key)))

    def subscribe(self, kind: str, listener: Any) -> None:
        self.feed.subscribe(kind, listener)

    def on_resync(self, listener: Any) -> None:
        self.feed.on_resync(listener)

    def start(self) -> None:
        self.feed.start()

    # --- unreachable, and back ---------------------------------------------------------------

    def _mark_down(self, reason: str) -> None:
        with self._down_lock:
            if self._down_since is not None or self._closed.is_set():
                return
            self._down_since = time.monotonic()
            log.error(
                "state database unreachable; calls that need state fail until it answers",
                extra={"store": self._where, "error": reason},
            )
            self._prober = threading.Thread(target=self._probe, name="state-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        while not self._closed.wait(self._settings.retry_interval_s):
            try:
                with psycopg.connect(self._dsn, autocommit=True, **self._kwargs) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                continue
            self._pool.check()  # the connections the outage broke are replaced
            with self._down_lock:
                down_for = time.monotonic() - (self._down_since or time.monotonic())
                self._down_since = None
            log.info(
                "state database reachable again",
                extra={"store": self._where, "down_s": round(down_for, 3)},
            )
            return

    def close(self) -> None:
        self._closed.set()
        self.feed.close()
        self._pool.close()


def _reason(exc: psycopg.Error) -> str:
    """The server's or libpq's own words (they name host, user and database, never the
    password); first line only."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
