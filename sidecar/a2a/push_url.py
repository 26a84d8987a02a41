"""A push-notification URL read strictly into the facts policy matches: scheme, host, port.

A push config makes an agent (the peer outbound, this agent inbound) POST task updates to the
URL later, past the sidecar, so policy must see the exact place: the host AND the effective
port (``hooks.example.com`` on 6379 is not ``hooks.example.com`` on 443). Anything an HTTP
client could read another way than this parser is refused, never guessed at: userinfo
(``user:pass@``, which may hold a secret and is never put in input or audit), an empty or
out-of-range or non-numeric port, an empty host, a host outside the DNS/IPv4 character set
(percent-escapes, backslashes, non-ASCII), an IPv6 literal with a zone id or an IPvFuture
literal, whitespace or control characters anywhere in the URL.

The facts: ``scheme`` (``http``/``https``), ``host`` (lower-case; an IPv6 literal without
brackets, in its compressed form) and ``port`` (the explicit one, else 443 for https and 80
for http). Error messages never quote the URL.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "PushTarget", "PushUrlError", "parse_push_url"]

DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_URL_CHARS = 8192
# A DNS name or dotted IPv4 address, lower-cased (underscore: names in the wild carry one).
_HOST = re.compile(r"[a-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")
# Whitespace, control characters and the backslash (a WHATWG parser reads it as "/").
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class PushUrlError(ValueError):
    """The URL is not one the sidecar can hand to policy as one unambiguous host and port."""


@dataclass(frozen=True)
class PushTarget:
    """Where a push-notification config would send task updates."""

    scheme: str
    host: str
    port: int

    def to_input(self) -> dict[str, str | int]:
        """``push_url`` as policy reads it (docs/policy-contract.md)."""
        return {"scheme": self.scheme, "host": self.host, "port": self.port}


def parse_push_url(url: str) -> PushTarget:
    """The scheme, host and effective port of ``url``; :class:`PushUrlError` if any is
    missing, malformed or ambiguous."""
    if len(url) > _MAX_URL_CHARS:
        raise PushUrlError(f"must be at most {_MAX_URL_CHARS} characters")
    if _UNSAFE.search(url):
        raise PushUrlError("must not contain whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise PushUrlError("must be an http(s) URL with a host") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        raise PushUrlError("must be an http(s) URL with a host")
    netloc = parts.netloc
    if "@" in netloc:
        raise PushUrlError("must not carry userinfo (user:password@)")
    host, port_text = _split_authority(netloc)
    return PushTarget(scheme=scheme, host=host, port=_port(port_text, scheme))


def _split_authority(netloc: str) -> tuple[str, str | None]:
    """``(host, port text or None)``: an IPv6 literal checked and compressed, a name
    lower-cased and checked."""
    if netloc.startswith("["):
        literal, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise PushUrlError("has a malformed IPv6 literal")
        if "%" in literal:
            raise PushUrlError("must not name an IPv6 zone id")
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise PushUrlError("has a malformed IPv6 literal") from None
        return address.compressed, rest[1:] if rest else None
    host, colon, port_text = netloc.partition(":")
    host = host.lower()
    if not host:
        raise PushUrlError("must name a host")
    if not _HOST.fullmatch(host):
        raise PushUrlError("host must be a DNS name or IPv4 address (ASCII letters, digits, .-_)")
    return host, port_text if colon else None


def _port(text: str | None, scheme: str) -> int:
    """The explicit port (1-65535, decimal digits only), else the scheme's default."""
    if text is None:
        return DEFAULT_PORTS[scheme]
    if not _PORT.fullmatch(text):
        raise PushUrlError("port must be 1 to 5 decimal digits")
    port = int(text)
    if not 1 <= port <= 65535:
        raise PushUrlError("port must be between 1 and 65535")
    return port
