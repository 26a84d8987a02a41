"""Relay: how an allowed call reaches its upstream."""

from __future__ import annotations

from sidecar.relay.errors import (
    RelayError,
    RequestBuildError,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.relay.http import HttpRelay, UpstreamRequest, UpstreamResponse, build_request

__all__ = [
    "HttpRelay",
    "RelayError",
    "RequestBuildError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamResponseTooLarge",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "build_request",
]
