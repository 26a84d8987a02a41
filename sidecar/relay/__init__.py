"""Relay: how an allowed call reaches its upstream."""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "HttpRelay",
    "ModelSettings",
    "ProviderSettings",
    "RelayError",
    "RelaySettings",
    "RequestBuildError",
    "TargetAuthSettings",
    "TargetSettings",
    "ToolSettings",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamResponseTooLarge",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "build_request",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.relay.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "RelayError": "errors",
        "RequestBuildError": "errors",
        "UpstreamResponseTooLarge": "errors",
        "UpstreamStatusError": "errors",
        "UpstreamTimeout": "errors",
        "UpstreamUnavailable": "errors",
        "HttpRelay": "http",
        "UpstreamRequest": "http",
        "UpstreamResponse": "http",
        "build_request": "http",
        "ModelSettings": "settings",
        "ProviderSettings": "settings",
        "RelaySettings": "settings",
        "TargetAuthSettings": "settings",
        "TargetSettings": "settings",
        "ToolSettings": "settings",
    },
)
