"""Who is at the console: the approver, from an authenticating proxy's headers or an mTLS
client certificate; and the anti-CSRF token bound to them.

Proxy headers are believed only when the proxy proves itself (:mod:`.proxy`: the unix socket
only it can reach, or its address and shared secret): anyone else could type them. The
approver then is ``user:NAME`` and their groups count for ``group:NAME`` entries of an
approval's ``approvers``. With mTLS the approver is the certificate's SPIFFE ID (as on the
approvals API).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.console.proxy import NotAuthenticated, Peer, ProxyGate
from sidecar.console.settings import ConsoleSettings
from sidecar.errors import SidecarError

__all__ = [
    "Approver",
    "Csrf",
    "NotAuthenticated",
    "Peer",
    "ProxyGate",
    "approver_from_cert",
    "approver_from_proxy",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,200}$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,200}$")
MAX_GROUPS = 200


@dataclass(frozen=True)
class Approver:
    id: str
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("an approver has an id")


def approver_from_proxy(
    settings: ConsoleSettings, gate: ProxyGate, peer: Peer, headers: Mapping[str, str]
) -> Approver:
    """The approver the proxy names, once ``gate`` has found the request is the proxy's."""
    gate.check(peer, headers)
    user = headers.get(settings.user_header, "").strip()
    if not user:
        raise NotAuthenticated(
            f"the proxy sent no {settings.user_header} header: not signed in", status=401
        )
    if _NAME_RE.fullmatch(user) is None:
        raise NotAuthenticated(f"{settings.user_header} is not a user name")
    raw = headers.get(settings.groups_header, "")
    groups = tuple(g.strip() for g in raw.split(",") if g.strip())
    if len(groups) > MAX_GROUPS or any(_GROUP_RE.fullmatch(g) is None for g in groups):
        raise NotAuthenticated(f"{settings.groups_header} is not a list of group names")
    return Approver("user:" + user, groups)


def approver_from_cert(peercert: Mapping[str, Any] | None) -> Approver:
    """The SPIFFE ID in a verified client certificate (the TLS layer checked the chain)."""
    if not peercert:
        raise NotAuthenticated("no client certificate", status=401)
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        raise NotAuthenticated("the client certificate does not carry exactly one SPIFFE ID")
    return Approver(spiffe[0])


class Csrf:
    """A token per approver, HMAC-signed: a form posted from another site lacks it."""

    def __init__(self, key_file: Path | None) -> None:
        if key_file is None:
            self._key = secrets.token_bytes(32)
        else:
            try:
                self._key = key_file.read_bytes().strip()
            except OSError as exc:
                raise SidecarError(
                    f"console.csrf_key_file {key_file}: cannot read: {exc.strerror}"
                ) from exc
            if len(self._key) < 16:
                raise SidecarError(f"console.csrf_key_file {key_file}: shorter than 16 bytes")

    def token(self, approver: Approver) -> str:
        return hmac.new(self._key, approver.id.encode(), hashlib.sha256).hexdigest()

    def valid(self, approver: Approver, token: str) -> bool:
        return hmac.compare_digest(self.token(approver), token or "")
