"""Relay errors. Each carries the stable ``code`` the call fails with."""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = [
    "ProviderKeyUnavailable",
    "RelayError",
    "RequestBuildError",
    "UpstreamBadResponse",
    "UpstreamResponseTooLarge",
    "UpstreamStatusError",
    "UpstreamStreamInterrupted",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class RelayError(SidecarError):
    """``reached``: whether bytes of the request may have reached the upstream. Only a
    failure to connect at all (refused, DNS, connect timeout, TLS handshake) is False; the
    audit record's ``relayed`` says so."""

    code = "upstream_error"

    def __init__(self, message: str = "", *, reached: bool = True) -> None:
        super().__init__(message)
        self.reached = reached


class RequestBuildError(RelayError):
    """The arguments cannot form the configured request (missing or unsafe path parameter)."""

    code = "invalid_arguments"

    def __init__(self, message: str = "", *, reached: bool = False) -> None:
        super().__init__(message, reached=reached)


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

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str,
        retry_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"the upstream answered HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
        self.retry_headers = retry_headers or {}  # Retry-After / retry-after-ms, as sent


class UpstreamBadResponse(RelayError):
    """The provider answered 2xx with something that is not the API's JSON."""

    code = "upstream_bad_response"


class UpstreamStreamInterrupted(RelayError):
    """A streamed answer broke off (connection lost, or it ended without ``[DONE]``)."""

    code = "upstream_stream_interrupted"


class ProviderKeyUnavailable(RelayError):
    """The provider key file is missing, unreadable or empty: nothing is sent."""

    code = "credential_unavailable"

    def __init__(self, message: str = "", *, reached: bool = False) -> None:
        super().__init__(message, reached=reached)
