"""The ``state`` section: where approvals, tasks, budgets and MCP pins live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["PostgresSettings", "StateSettings"]


@dataclass(frozen=True)
class PostgresSettings:
    """``state.postgres``: the shared store of a fleet of sidecars."""

    # A file holding the DSN (libpq URI or key=value string, password included): mount it from
    # a Secret. Read when the sidecar starts; never printed.
    dsn_file: Path | None = None
    # Connections per sidecar process (the state thread uses one at a time; the feed has its own).
    pool_size: int = 4
    # How long to wait for a connection before the call fails with state_unavailable.
    connect_timeout_s: float = 2.0
    # A statement or row lock taking longer fails the call (state_unavailable), never hangs it.
    statement_timeout_ms: int = 2000
    # While the database is unreachable, how often to try again.
    retry_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.pool_size <= 64:
            raise ValueError(f"pool_size: {self.pool_size} is outside 1..64")
        if not 0 < self.connect_timeout_s <= 60:
            raise ValueError(f"connect_timeout_s: {self.connect_timeout_s} is outside (0, 60]")
        if not 10 <= self.statement_timeout_ms <= 60_000:
            raise ValueError(
                f"statement_timeout_ms: {self.statement_timeout_ms} is outside 10..60000"
            )
        if not 0.05 <= self.retry_interval_s <= 60:
            raise ValueError(f"retry_interval_s: {self.retry_interval_s} is outside 0.05..60")


@dataclass(frozen=True)
class StateSettings:
    """Where the sidecar keeps what must survive a restart and be shared: approvals, tasks,
    budgets, MCP definition pins. ``sqlite`` (default): ``<dir>/state.db``, one host.
    ``postgres``: one database shared by every replica."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dir: Path = Path("state")
    postgres: PostgresSettings = field(default_factory=PostgresSettings)

    def __post_init__(self) -> None:
        if self.backend == "postgres" and self.postgres.dsn_file is None:
            raise ValueError(
                "postgres: backend postgres needs postgres.dsn_file (a file holding the DSN, "
                "e.g. mounted from a Secret)"
            )
