"""Errors of the state store.

::

    SidecarError
    └── StateError          the store cannot be read or written: calls that need it fail closed
                            with ``state_unavailable``
        └── MigrationError  the schema cannot be brought to the version this build needs
"""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = ["MigrationError", "StateError"]


class StateError(SidecarError):
    """The state store cannot be opened, read or written; calls that need it fail closed.

    ``str()`` names the store (host, port, database) and the server's words: for operators,
    in logs and the CLI. An agent whose call fails on it is told only ``agent_message``
    with the stable code ``state_unavailable``: where the fleet's database lives is not its
    business."""

    agent_message = "the sidecar's state store is unavailable; retry later"


class MigrationError(StateError):
    """The schema is unknown to this build (newer) or a migration failed."""
