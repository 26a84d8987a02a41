"""Checks shared by the settings modules: addresses, URLs, SPIFFE IDs, socket modes.

A failed check raises ``ValueError("field: message")``; the configuration loader
(``sidecar.typed_config``) turns the field into the full dotted key and names the file.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = [
    "MIB",
    "SPIFFE_ID_RE",
    "check",
    "check_address",
    "check_base_url",
    "check_host_port",
    "is_local_address",
    "is_loopback_host",
]

MIB = 1024 * 1024
SPIFFE_ID_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$")


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; ``message`` starts ``field: ``."""
    if not condition:
        raise ValueError(message)


def check_address(address: str) -> None:
    """A listener's ``listen``: ``unix:PATH`` or ``HOST:PORT``."""
    if address.startswith("unix:"):
        check(len(address) > len("unix:"), f"listen: {address!r} names no socket path")
        return
    _, sep, port = address.rpartition(":")
    check(bool(sep) and port.isdigit(), f"listen: {address!r} is not HOST:PORT or unix:PATH")


def check_host_port(address: str) -> None:
    """A TCP-only ``listen``: ``HOST:PORT``."""
    _, sep, port = address.rpartition(":")
    check(bool(sep) and port.isdigit(), f"listen: {address!r} is not HOST:PORT")


def check_base_url(url: str) -> None:
    """An upstream's root: http(s), a host, and nothing that could smuggle credentials or a
    different request (query, fragment, userinfo)."""
    parts = urlsplit(url)
    check(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        f"base_url: {url!r} is not an http(s) URL",
    )
    check(
        not parts.query and not parts.fragment and not parts.username,
        f"base_url: {url!r} must not carry a query, fragment or credentials",
    )


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: reachable only from inside the pod."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_address(address: str) -> bool:
    """Loopback or a unix socket: reachable only from inside the pod."""
    if address.startswith("unix:"):
        return True
    return is_loopback_host(address.rpartition(":")[0].strip("[]"))
