"""Is this request from the authenticating proxy? Identity headers are believed only then.

On a unix socket, reaching it is the proof (its mode keeps others out), and when
``proxy_uids`` is set the kernel's word on the peer's uid (``SO_PEERCRED``) must name the
proxy. On TCP, the peer's address must be a ``trusted_proxies`` one *and* the request must carry
the shared secret (``proxy_secret_header``): any process on the same loopback has the right
address, only the proxy has the secret. The secret is never logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.console.settings import ConsoleSettings
from sidecar.errors import SidecarError

__all__ = ["NotAuthenticated", "Peer", "ProxyGate", "peer_uid"]

MIN_SECRET_BYTES = 16


class NotAuthenticated(SidecarError):
    """The request does not name an approver the console can believe (HTTP 401/403)."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Peer:
    """The other end of a connection: its IP address (TCP), or that it came over the unix
    socket and, if the kernel says, its uid."""

    address: str | None = None
    unix: bool = False
    uid: int | None = None


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of a unix-socket peer (Linux ``SO_PEERCRED``), or ``None`` if unknown."""
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, _ = struct.unpack("3i", raw)
    return uid


class ProxyGate:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self._secret = b""
        path = settings.proxy_secret_file
        if path is not None:
            try:
                self._secret = path.read_bytes().strip()
            except OSError as exc:
                raise SidecarError(
                    f"console.proxy_secret_file {path}: cannot read: {exc.strerror}"
                ) from exc
            if len(self._secret) < MIN_SECRET_BYTES:
                raise SidecarError(
                    f"console.proxy_secret_file {path}: shorter than {MIN_SECRET_BYTES} bytes"
                )

    def check(self, peer: Peer, headers: Mapping[str, str]) -> None:
        """Raises :class:`NotAuthenticated` unless ``peer`` is the proxy."""
        settings = self._settings
        if settings.unix_path is not None:
            if not peer.unix:
                raise NotAuthenticated("the console serves its proxy on a unix socket only")
            if settings.proxy_uids and peer.uid not in settings.proxy_uids:
                raise NotAuthenticated(
                    f"uid {peer.uid} is not the proxy's (console.proxy_uids): sign in through "
                    "the authenticating proxy"
                )
            return
        try:
            address = ipaddress.ip_address((peer.address or "").split("%", 1)[0])
        except ValueError:
            raise NotAuthenticated("the connection's address is unknown") from None
        if not any(address in network for network in settings.networks):
            raise NotAuthenticated(
                f"{address} is not a trusted proxy (console.trusted_proxies): sign in through "
                "the authenticating proxy"
            )
        if self._secret:
            sent = headers.get(settings.proxy_secret_header, "").encode("utf-8", "replace")
            if not hmac.compare_digest(self._secret, sent):
                raise NotAuthenticated(
                    f"the request does not carry the proxy's secret ({settings.proxy_secret_header}"
                    "): sign in through the authenticating proxy"
                )
