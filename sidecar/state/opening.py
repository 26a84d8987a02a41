"""Opening the configured state store (sqlite by default, postgres for a fleet)."""

from __future__ import annotations

from sidecar.state.base import StateDb
from sidecar.state.errors import StateError
from sidecar.state.settings import PostgresSettings, StateSettings
from sidecar.state.sqlite import SqliteStateDb

__all__ = ["open_state", "read_dsn"]


def read_dsn(settings: PostgresSettings) -> str:
    """The DSN from ``postgres.dsn_file`` (surrounding whitespace dropped)."""
    path = settings.dsn_file
    if path is None:
        raise StateError("state.postgres.dsn_file is not set")
    try:
        dsn = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StateError(f"state.postgres.dsn_file {path}: cannot read: {exc.strerror}") from exc
    if not dsn:
        raise StateError(f"state.postgres.dsn_file {path} is empty")
    return dsn


def open_state(settings: StateSettings) -> StateDb:
    """Open (and migrate) the configured store; raises :class:`StateError` when it cannot."""
    if settings.backend == "postgres":
        # Imported only when configured: the embedded default does not load psycopg.
        from sidecar.state.postgres import PostgresStateDb

        return PostgresStateDb(settings.postgres, read_dsn(settings.postgres))
    return SqliteStateDb(settings.dir / "state.db")
