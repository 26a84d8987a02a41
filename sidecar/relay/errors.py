"""Relay errors. Each carries the stable ``code`` the call fails with."""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = [
    "RelayError",
    "RequestBuildError",
    "UpstreamResponseTooLarge",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class RelayError(SidecarError):
    code = "upstream_error"


class RequestBuildError(RelayError):
    """The arguments cannot form the configured request (missing or unsafe path parameter)."""

    code = "invalid_arguments"


class UpstreamUnavailable(RelayError):
    """Connection refused or reset, DNS or TLS failure."""

    code = "upstream_unavailable"


class UpstreamTimeout(RelayError):
    code = "upstream_timeout"


class UpstreamResponseTooLarge(RelayError):
    code = "upstream_response_too_large"


class UpstreamStatusError(RelayError):
    """The upstream answered with a non-2xx status; its (bounded) body is kept for the agent."""

    code = "upstream_error"

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"the upstream answered HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
