"""Identity errors: the caller could not be attested."""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = ["IdentityError", "InvalidSpiffeIdError"]


class IdentityError(SidecarError):
    """No attested subject; the call is answered UNAUTHENTICATED with ``code``."""

    code = "unauthenticated"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidSpiffeIdError(IdentityError, ValueError):
    """A string that is not a SPIFFE ID."""

    code = "invalid_spiffe_id"
