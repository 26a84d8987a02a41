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
    """The state store cannot be opened, read or written; calls that need it fail closed."""


class MigrationError(StateError):
    """The schema is unknown to this build (newer) or a migration failed."""
