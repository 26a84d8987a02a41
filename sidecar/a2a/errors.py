"""A2A errors. Each carries a stable snake_case ``code`` (the audit and metrics label).

A2aError                     root
"""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = ["A2aError"]


class A2aError(SidecarError):
    """Root of the A2A errors; ``code`` is the stable reason."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
