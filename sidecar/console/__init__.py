"""The approvals web console: pending approvals fleet-wide, decided by authenticated humans.

``agent-sidecar console --config FILE`` serves it over the state store the sidecars share
(docs/console.md). Only the settings are imported here; the server loads on demand.
"""

from __future__ import annotations

from sidecar.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings"]
