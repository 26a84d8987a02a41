"""The collector's headers (its API key), read from ``telemetry.headers_file``."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.telemetry.bounded_file import read_bounded

__all__ = ["HeadersError", "read_headers"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]{0,127}$")
MAX_BYTES = 64 * 1024


class HeadersError(ValueError):
    """The headers file cannot be used; the message names the line, never a value."""


def read_headers(path: Path) -> dict[str, str]:
    """``Name: value`` lines (``#`` comments, blank lines ignored); names lowercased (gRPC
    metadata). A value is never put in an error message: it is a credential."""
    data = read_bounded(path, MAX_BYTES, HeadersError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HeadersError(f"{path} is not UTF-8") from None
    headers: dict[str, str] = {}
    # Lines end at \n (a CRLF file is fine); a lone \r or other control character inside a
    # line is refused, never taken as a line break (no header smuggled into another).
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.removesuffix("\r").strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition(":")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not sep or not _NAME.match(name):
            raise HeadersError(f"{path}: line {number} is not 'Name: value'")
        if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise HeadersError(f"{path}: line {number}: the value is empty or not printable")
        if name.lower() in headers:
            raise HeadersError(f"{path}: line {number}: {name!r} is set twice")
        headers[name.lower()] = value
    return headers
