"""Errors of the state store.

::

    SidecarError
    └── StateError          the store cannot be read or written: calls that need it fail closed
                            with ``state_unavailable``
        ├── MigrationError  the schema cannot be brought to the version this build needs
        └── StateBusy       work asked not to wait would have had to (run it on the state thread)
"""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = ["MigrationError", "StateBusy", "StateError"]


class StateError(SidecarError):
    """The state store cannot be opened, read or written; calls that need it fail closed.

    ``str()`` names the store (host, port, database) and the server's words: for operators,
    in logs and the CLI. An agent whose call fails on it is told only ``agent_message``
    with the stable code ``state_unavailable``: where the fleet's database lives is not its
    business."""

    agent_message = "the sidecar's state store is unavailable; retry later"


class MigrationError(StateError):
    """The schema is unknown to this build (newer) or a migration failed."""


class StateBusy(StateError):
    """Work asked to run without waiting (:meth:`StateDb.without_waiting`) would have had to
    wait: for the state thread's lock, another process's write lock, or a network round trip.
    Nothing was written; the caller runs the same work on the state thread instead."""
