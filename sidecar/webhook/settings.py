"""Webhook configuration: the injection template and allow-lists, validated once at start.

Loaded with the same strict loader as the sidecar's config (unknown keys and wrong types are
errors naming the file and key), and swapped atomically when the file changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import ConfigError, _convert, _KeyedError

__all__ = [
    "OpaTemplate",
    "Resources",
    "SidecarTemplate",
    "WebhookSettings",
    "load_webhook_settings",
]


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class SidecarTemplate:
    image: str = "ghcr.io/agent-sidecar/agent-sidecar:0.1.0"
    config_map: str = "agent-sidecar-config"
    # The agent API, as the agent containers reach it (loopback: shared pod network).
    agent_address: str = "127.0.0.1:7443"
    run_as_user: int = 65532
    resources: Resources = field(default_factory=Resources)
    # When set (http://127.0.0.1:PORT/v1), the sidecar serves its model front door there and
    # agents get OPENAI_BASE_URL pointing to it.
    model_front_door_url: str = ""

    def __post_init__(self) -> None:
        if self.model_front_door_url:
            from urllib.parse import urlsplit

            parts = urlsplit(self.model_front_door_url)
            if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
                raise ValueError(
                    "model_front_door_url: must be http://127.0.0.1:PORT/v1 (the front door "
                    "listens on the pod's loopback only)"
                )
            if parts.port is None:
                raise ValueError("model_front_door_url: needs an explicit port")


@dataclass(frozen=True)
class OpaTemplate:
    image: str = "openpolicyagent/opa:1.4.2-static"
    config_map: str = "agent-sidecar-opa-config"
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class WebhookSettings:
    """What the webhook injects, and which per-pod choices it accepts."""

    # The webhook's own namespace: never injected.
    namespace: str = "agent-sidecar-system"
    skip_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    sidecar: SidecarTemplate = field(default_factory=SidecarTemplate)
    opa: OpaTemplate = field(default_factory=OpaTemplate)
    spiffe_csi_driver: str = "csi.spiffe.io"
    default_engine: str = "embedded"
    default_identity_mode: str = "pod"
    allowed_engines: tuple[str, ...] = ("embedded", "opa")
    allowed_identity_modes: tuple[str, ...] = ("pod", "jwt", "mtls")
    # Policy bundles a pod may choose (agent-sidecar.io/policy-bundle); the first is the default.
    allowed_policy_bundles: tuple[str, ...] = ("agentsidecar",)
    max_request_bytes: int = 1024 * 1024
    # A TLS handshake, the request's headers and its body must each arrive within this.
    read_timeout_s: float = 10.0
    # Connections served at once; more are closed at accept (the API server retries).
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.read_timeout_s <= 0:
            raise ValueError("read_timeout_s: must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections: must be >= 1")
        if self.default_engine not in self.allowed_engines:
            raise ValueError("default_engine: not in allowed_engines")
        if self.default_identity_mode not in self.allowed_identity_modes:
            raise ValueError("default_identity_mode: not in allowed_identity_modes")
        if not self.allowed_policy_bundles:
            raise ValueError("allowed_policy_bundles: at least one bundle is required")


def load_webhook_settings(path: str | Path) -> WebhookSettings:
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read webhook config: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the webhook config must be a mapping")
    try:
        return _convert(WebhookSettings, raw, "", path.parent)
    except _KeyedError as exc:
        raise ConfigError(f"{path}: {exc.key}: {exc}") from None
