"""The sidecar's durable, shareable state: approvals, tasks, budgets, MCP definition pins.

``state.backend: sqlite`` (default) keeps it in ``<state.dir>/state.db`` for one host;
``postgres`` shares it across every replica of a fleet. Both apply the versioned migrations
shipped in ``migrations/`` when they open, and give the same guarantees (docs/state.md).
"""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "Conn",
    "MigrationError",
    "PostgresSettings",
    "Row",
    "SqliteStateDb",
    "StateBusy",
    "StateDb",
    "StateError",
    "StateSettings",
    "open_state",
    "read_dsn",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.state.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "Conn": "base",
        "Row": "base",
        "StateDb": "base",
        "MigrationError": "errors",
        "StateBusy": "errors",
        "StateError": "errors",
        "PostgresSettings": "settings",
        "StateSettings": "settings",
        "SqliteStateDb": "sqlite",
        "open_state": "opening",
        "read_dsn": "opening",
    },
)
