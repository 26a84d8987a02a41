"""A small file the telemetry section names (CA bundle, headers), read whole or refused with
the caller's own error, so each bad file fails at start with a message naming it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_bounded"]


def read_bounded(path: Path, limit: int, error: type[ValueError], label: str = "") -> bytes:
    """The file's bytes; ``error`` (naming ``label`` and the path, never the content) when it
    cannot be read or is larger than ``limit`` bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {label}{path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{label}{path} is larger than {limit} bytes")
    return data
