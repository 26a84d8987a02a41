"""The ``tasks`` section: task lifetimes (``sidecar.tasks``)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.validate import check

__all__ = ["TaskSettings"]


@dataclass(frozen=True)
class TaskSettings:
    """Task lifetimes: StartTask's ttl_s defaults to ``default_ttl_s``, capped at ``max_ttl_s``."""

    default_ttl_s: int = 3600
    max_ttl_s: int = 86400

    def __post_init__(self) -> None:
        check(self.default_ttl_s > 0, "default_ttl_s: must be > 0")
        check(self.max_ttl_s >= self.default_ttl_s, "max_ttl_s: must be >= default_ttl_s")
