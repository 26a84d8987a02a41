"""The ``telemetry`` section: where the sidecar pushes its spans and metrics (OTLP)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar.validate import check, is_loopback_host

__all__ = ["TelemetrySettings", "is_loopback_host"]

# Resource attribute keys: OpenTelemetry's dotted names, nothing that could smuggle syntax.
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class TelemetrySettings:
    """OTLP export, off by default (``endpoint`` empty). With it off the OpenTelemetry SDK is
    never imported. Export runs on the SDK's own threads behind bounded queues: a dead or slow
    collector drops (and counts) telemetry, never delays or fails a call."""

    # The collector: ``https://host:port`` (TLS) or ``http://host:port`` (plaintext, loopback
    # only). gRPC: the host and port; http: the base URL (``/v1/traces``, ``/v1/metrics``).
    endpoint: str = ""
    protocol: Literal["grpc", "http"] = "grpc"
    # Headers for the collector (its API key): ``Name: value`` lines, read at start (a mounted
    # Secret); never logged.
    headers_file: Path | None = None
    # TLS: the CA bundle that signs the collector's certificate (default: the system's).
    ca_file: Path | None = None
    # Share of new traces sampled; a caller's sampled ``traceparent`` flag is followed.
    sampling_ratio: float = 1.0
    # Follow the caller's sampled flag (true), or apply sampling_ratio to every call, the
    # caller's traceparent only continuing the trace (false: an agent cannot force export).
    trust_caller_sampling: bool = True
    # Resource attributes (``service.name`` defaults to ``agent-sidecar``).
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    # Spans held for export; beyond it new spans are dropped and counted.
    queue_size: int = 2048
    # How long one export may take before it is abandoned (its batch counted as dropped).
    export_timeout_s: float = 10.0
    # How often spans are sent (at most) and metrics pushed.
    batch_delay_s: float = 1.0
    metrics_interval_s: float = 15.0
    # Prompts, arguments and results as span attributes: only with this on AND the call's log
    # obligation ``full`` (what the audit log then holds too).
    capture_content: bool = False

    def __post_init__(self) -> None:
        check(0.0 <= self.sampling_ratio <= 1.0, "sampling_ratio: must be between 0 and 1")
        check(1 <= self.queue_size <= 1_000_000, "queue_size: must be between 1 and 1000000")
        check(0 < self.export_timeout_s <= 300, "export_timeout_s: must be > 0 and at most 300")
        check(0 < self.batch_delay_s <= 60, "batch_delay_s: must be > 0 and at most 60")
        check(0 < self.metrics_interval_s <= 3600, "metrics_interval_s: must be > 0 and <= 3600")
        for key, value in self.resource_attributes.items():
            check(
                bool(_ATTRIBUTE_KEY.match(key)),
                f"resource_attributes: {key!r} is not an attribute name",
            )
            check(
                isinstance(value, str) and len(value) <= 1024,
                f"resource_attributes: {key!r} must be a string of at most 1024 characters",
            )
        if not self.endpoint:
            return
        parts = urlsplit(self.endpoint)
        check(
            parts.scheme in ("http", "https") and bool(parts.hostname),
            f"endpoint: {self.endpoint!r} is not an http:// or https:// URL",
        )
        check(
            not parts.username and not parts.password and not parts.query and not parts.fragment,
            f"endpoint: {self.endpoint!r} must not carry credentials, a query or a fragment "
            "(headers go in headers_file)",
        )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            check(False, f"endpoint: {self.endpoint!r} has a bad port")
        if self.protocol == "grpc":
            check(
                parts.path in ("", "/"),
                f"endpoint: {self.endpoint!r}: a gRPC endpoint is host and port, no path",
            )
        if not self.secure:
            check(
                is_loopback_host(parts.hostname or ""),
                f"endpoint: {self.endpoint!r} is plaintext to a host that is not loopback; "
                "use https:// (plaintext only to a collector inside the pod)",
            )
            check(self.ca_file is None, "ca_file: set, but the endpoint is plaintext http://")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"
