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
    identity and groups in headers; they are believed only from a proxy that proves itself:
    on ``listen: unix:///PATH`` by reaching the socket (``socket_mode``, and its uid among
    ``proxy_uids`` when set); on ``HOST:PORT`` by its address in ``trusted_proxies`` *and*
    the shared secret of ``proxy_secret_file`` in ``proxy_secret_header``. A console whose
    proxy cannot prove itself does not start (:meth:`proxy_proof_problem`).
    ``auth: mtls``: approvers present a client certificate from ``client_ca_file``; the
    approver is its SPIFFE ID (URI SAN).
    """

    listen: str = "127.0.0.1:7490"  # or unix:///PATH (auth: proxy)
    auth: Literal["proxy", "mtls"] = "proxy"
    # proxy on HOST:PORT: the addresses (IPs or CIDRs) the identity headers are accepted from,
    # and the secret the proxy sends in proxy_secret_header (at least 16 bytes).
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    proxy_secret_file: Path | None = None
    proxy_secret_header: str = "X-Console-Proxy-Secret"  # noqa: S105 (a header's name)
    # proxy on unix:///PATH: the socket's mode (octal), and the uids whose connections carry
    # identity headers (SO_PEERCRED; empty: whoever the mode lets connect).
    socket_mode: str = "0600"
    proxy_uids: tuple[int, ...] = ()
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
        if self.unix_path is not None:
            if not self.unix_path.is_absolute():
                raise ValueError(f"listen: {self.listen!r} is not unix:///ABSOLUTE/PATH")
            if self.auth != "proxy":
                raise ValueError("listen: a unix socket serves auth proxy only (mtls needs TCP)")
        else:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"listen: {self.listen!r} is not HOST:PORT or unix:///PATH")
            if self.proxy_uids:
                raise ValueError("proxy_uids: only for listen unix:///PATH")
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise ValueError(f"socket_mode: {self.socket_mode!r} is not octal") from None
        if not 0 <= mode <= 0o777 or mode & 0o007:
            raise ValueError(f"socket_mode: {self.socket_mode} (others may never connect)")
        if any(uid < 0 for uid in self.proxy_uids):
            raise ValueError("proxy_uids: a uid is not negative")
        if self.proxy_secret_file is not None and self.auth != "proxy":
            raise ValueError("proxy_secret_file: only for auth proxy")
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
        for name in ("user_header", "groups_header", "proxy_secret_header"):
            if not getattr(self, name).replace("-", "").isalnum():
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a header name")

    @property
    def unix_path(self) -> Path | None:
        """The socket's path when ``listen`` is ``unix:///PATH`` (or ``unix:PATH``)."""
        if not self.listen.startswith("unix:"):
            return None
        return Path(self.listen.removeprefix("unix://").removeprefix("unix:"))

    def proxy_proof_problem(self) -> str | None:
        """Why identity headers could come from someone other than the proxy, or ``None``.
        Checked when the console starts (a sidecar's config need not configure a console)."""
        if self.auth != "proxy" or self.unix_path is not None:
            return None
        if self.proxy_secret_file is None:
            return (
                f"console.auth proxy on {self.listen}: any local process could send "
                f"{self.user_header}; listen on unix:///PATH (a socket only the proxy can "
                "reach) or set console.proxy_secret_file (a secret only the proxy sends)"
            )
        return None

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(e, strict=False) for e in self.trusted_proxies)
