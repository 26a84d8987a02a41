"""The ``admin`` section: the listener that serves Prometheus metrics (``sidecar.metrics``)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.validate import check

__all__ = ["AdminSettings"]


@dataclass(frozen=True)
class AdminSettings:
    """The admin listener: Prometheus metrics (``/metrics``)."""

    # HOST:PORT; empty: no admin listener.
    listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")
