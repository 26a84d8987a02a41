"""The collector's CA bundle (``telemetry.ca_file``): read and parsed at start, whichever the
protocol, so a missing or broken file fails before the sidecar listens rather than as
export errors later (OTLP/HTTP would only open it on the first export)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from sidecar.telemetry.bounded_file import read_bounded

__all__ = ["CaFileError", "read_ca"]

MAX_BYTES = 1024 * 1024


class CaFileError(ValueError):
    """The CA file cannot be used; the message names the file and why."""


def read_ca(path: Path) -> bytes:
    """The file's bytes, once it is known to hold at least one PEM certificate and nothing
    that is not one."""
    data = read_bounded(path, MAX_BYTES, CaFileError, "ca_file ")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CaFileError(f"ca_file {path} holds no PEM certificate")
    return data
