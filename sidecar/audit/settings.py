"""The ``audit`` section: where audit records go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar.validate import check

__all__ = ["AuditSettings"]


@dataclass(frozen=True)
class AuditSettings:
    """Where audit records go, and how hard the sidecar insists they get there."""

    path: Path = Path("audit.log")
    # strict: a record that cannot be written fails the call (before any relay);
    # best_effort: a bounded in-memory queue, oldest dropped (and counted) when full.
    mode: Literal["strict", "best_effort"] = "strict"
    # fsync after every record: durable across power loss, at a cost per call.
    fsync: bool = False
    buffer: int = 10000
    # Rotate the file at this size (0: never); keep this many rotated files.
    max_bytes: int = 0
    keep_files: int = 10
    # A signed checkpoint every N records or T seconds (and at shutdown).
    checkpoint_every: int = 100
    checkpoint_interval_s: float = 60.0
    # Checkpoints are also written here (default: <path>.checkpoints).
    checkpoints_path: Path | None = None
    # Development signing key (Ed25519 PEM, created if missing) when no SVID is available.
    signing_key: Path | None = None
    stdout: bool = False
    # A decision-log collector (OPA decision-log event format), batched and retried.
    http_url: str = ""
    http_batch: int = 100
    http_interval_s: float = 2.0

    def __post_init__(self) -> None:
        check(self.buffer > 0, "buffer: must be > 0")
        check(self.max_bytes >= 0, "max_bytes: must be >= 0")
        check(self.keep_files >= 1, "keep_files: must be >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every: must be >= 1")
        check(self.checkpoint_interval_s > 0, "checkpoint_interval_s: must be > 0")
        if self.http_url:
            parts = urlsplit(self.http_url)
            check(
                parts.scheme in ("http", "https") and bool(parts.hostname),
                f"http_url: {self.http_url!r} is not an http(s) URL",
            )
