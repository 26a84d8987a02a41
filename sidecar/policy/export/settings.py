"""The ``policy.status``, ``policy.decision_logs`` and ``policy.labels`` keys: OPA's status
and decision-log plugins, configured with the same key names as OPA's configuration
(https://www.openpolicyagent.org/docs/configuration#status, #decision-logs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sidecar.validate import check

__all__ = ["DecisionLogSettings", "ReportingSettings", "StatusSettings", "check_mask_path"]

# OPA's defaults (plugins/logs/plugin.go): 32 KB uploads, 300-600 s between them. The buffer
# is unlimited in OPA; here it is always bounded (a sidecar must not grow without limit).
DEFAULT_UPLOAD_BYTES = 32768
DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024


def _service_or_url(service: str, url: str, where: str) -> None:
    check(not (service and url), f"{where}: set service or url, not both")
    check(bool(service or url), f"{where}: needs service (a policy.bundle.services name) or url")
    if url:
        parts = urlsplit(url)
        check(
            parts.scheme in ("http", "https") and bool(parts.hostname),
            "url: is not an http(s) URL",
        )
        # Credentials in a URL end up in logs and process listings: a token belongs in a
        # service's bearer credentials. The value is never echoed (it may hold a password).
        check(
            parts.username is None and parts.password is None,
            "url: must not carry user:password@ (use a service with bearer credentials)",
        )
        check(not parts.query and not parts.fragment, "url: must not have a query or fragment")


def _resource(resource: str) -> None:
    check(
        resource.startswith("/") and "?" not in resource and "#" not in resource,
        f"resource: {resource!r} must be a path starting with /",
    )


@dataclass(frozen=True)
class StatusSettings:
    """OPA's ``status`` plugin: each bundle's state POSTed to ``<service>/status`` (or
    ``/status/<partition_name>``) whenever it changes."""

    service: str = ""
    # Not in OPA (whose services carry the URL): a base URL for a status service of its own.
    url: str = ""
    partition_name: str = ""
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _service_or_url(self.service, self.url, "service")
        check(0 < self.timeout_s <= 60, "timeout_s: must be between 0 and 60")
        check("/" not in self.partition_name, "partition_name: must not contain /")

    @property
    def resource(self) -> str:
        return f"/status/{self.partition_name}" if self.partition_name else "/status"


@dataclass(frozen=True)
class ReportingSettings:
    """OPA's ``decision_logs.reporting`` (the size buffer type). Delays may be fractions of a
    second here (OPA takes whole seconds)."""

    buffer_size_limit_bytes: int = DEFAULT_BUFFER_BYTES
    upload_size_limit_bytes: int = DEFAULT_UPLOAD_BYTES
    min_delay_seconds: float = 300.0
    max_delay_seconds: float = 600.0

    def __post_init__(self) -> None:
        check(self.buffer_size_limit_bytes > 0, "buffer_size_limit_bytes: must be > 0")
        check(
            1024 <= self.upload_size_limit_bytes <= 64 * 1024 * 1024,
            "upload_size_limit_bytes: must be between 1024 and 67108864",
        )
        check(self.min_delay_seconds > 0, "min_delay_seconds: must be > 0")
        check(
            self.max_delay_seconds >= self.min_delay_seconds,
            "max_delay_seconds: must be >= min_delay_seconds",
        )


@dataclass(frozen=True)
class DecisionLogSettings:
    """OPA's ``decision_logs`` plugin: every decision, masked, batched into gzip-compressed
    JSON arrays POSTed to ``<service><resource>`` (default ``/logs``)."""

    service: str = ""
    url: str = ""  # not in OPA: a base URL for a decision-log service of its own
    resource: str = "/logs"
    partition_name: str = ""
    reporting: ReportingSettings = field(default_factory=ReportingSettings)
    # OPA's mask paths (what data.system.log.mask returns, as static configuration): JSON
    # pointers under /input or /result, removed from each event and listed in ``erased``.
    mask: tuple[str, ...] = ()
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _service_or_url(self.service, self.url, "service")
        _resource(self.resource)
        check("/" not in self.partition_name, "partition_name: must not contain /")
        check(0 < self.timeout_s <= 60, "timeout_s: must be between 0 and 60")
        for i, path in enumerate(self.mask):
            problem = check_mask_path(path)
            check(not problem, f"mask[{i}]: {problem}")

    @property
    def path(self) -> str:
        """Where batches go (OPA: ``partition_name`` overrides ``resource``)."""
        return f"/logs/{self.partition_name}" if self.partition_name else self.resource


def check_mask_path(path: object) -> str:
    """Why ``path`` is not an OPA mask path (``""`` when it is)."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if not path.startswith("/"):
        return f"{path!r} must be slash-prefixed"
    if path.split("/")[1] not in ("input", "result"):
        return f"{path!r}: mask prefix not allowed (only /input and /result)"
    return ""


def check_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        check(
            isinstance(key, str) and bool(key) and isinstance(value, str),
            f"labels: {key!r} must map a name to a string",
        )
