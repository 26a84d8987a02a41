"""The ``console`` section: the approvals web console (``agent-sidecar console``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ConsoleSettings"]


@dataclass(frozen=True)
class ConsoleSettings:
    """Who may reach the console and how approvers are told apart.

    ``auth: proxy``: an authenticating proxy (oauth2-proxy) in front sets the approver's
    identity and groups in headers; they are believed only from ``trusted_proxies``.
    ``auth: mtls``: approvers present a client certificate from ``client_ca_file``; the
    approver is its SPIFFE ID (URI SAN).
    """

    listen: str = "127.0.0.1:7490"
    auth: Literal["proxy", "mtls"] = "proxy"
    # proxy: the addresses (IPs or CIDRs) the identity headers are accepted from.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # oauth2-proxy's names (--set-xauthrequest / --pass-user-headers).
    user_header: str = "X-Forwarded-Email"
    groups_header: str = "X-Forwarded-Groups"
    # mtls: the console's own certificate and the CA its approvers' certificates chain to.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    client_ca_file: Path | None = None
    # Signs the anti-CSRF tokens in forms; empty: a random key per process (a restart makes
    # open pages reload). Give a file to keep tokens valid across restarts and replicas.
    csrf_key_file: Path | None = None
    # Rows on one page.
    page_size: int = 50

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen: {self.listen!r} is not HOST:PORT")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or CIDR"
                ) from None
        if self.auth == "mtls":
            for name in ("tls_cert_file", "tls_key_file", "client_ca_file"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: auth mtls needs {name}")
        elif self.tls_cert_file is not None or self.client_ca_file is not None:
            raise ValueError(
                "auth: TLS files are set but auth is proxy (the proxy terminates TLS); "
                "set auth: mtls, or remove them"
            )
        if not 1 <= self.page_size <= 500:
            raise ValueError(f"page_size: {self.page_size} is outside 1..500")
        for name in ("user_header", "groups_header"):
            if not getattr(self, name).replace("-", "").isalnum():
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a header name")

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(e, strict=False) for e in self.trusted_proxies)
