"""The ``approvals`` section: the approvers' API and the limits on pending approvals."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sidecar.validate import SPIFFE_ID_RE, check, check_address

__all__ = [
    "MAX_CONSOLE_URL_CHARS",
    "NOTIFY_FORMATS",
    "ApprovalSettings",
    "check_console_url",
    "console_path_prefix",
]

NOTIFY_FORMATS = ("generic", "slack")
_LOOPBACK_NAMES = ("localhost",)
# What a console base URL may hold: enough for any host, port and path, nothing that ends a
# link in chat markup (Slack's <url|label>), HTML or a shell line.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/%@?#=&\[\]-]+")
# A link is this plus "/approvals/ap-<ULID>" (40 characters): well within the 3,000 Slack
# allows a button's URL, and short enough for any chat or ticket.
MAX_CONSOLE_URL_CHARS = 2048
# The path the console is reached under behind its proxy (/console): plain segments only, so
# the console can match it as text (sidecar.console.landing) without parsing URLs.
_PATH_PREFIX = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")


@dataclass(frozen=True)
class ApprovalSettings:
    """Step-up approvals: the approver-facing admin API and the limits on pending requests."""

    # unix:///PATH (who may connect is decided by the socket file's permissions) or HOST:PORT
    # (mTLS: the approver's X.509-SVID must be in `approvers`). Empty: <state.dir>/approvals.sock.
    listen: str = ""
    # Octal permission bits of the unix socket file.
    socket_mode: str = "0600"
    # SPIFFE IDs allowed to approve over mTLS (required for a HOST:PORT listener).
    approvers: tuple[str, ...] = ()
    # Names for the `approvers` of a decision's approval obligation: group -> members
    # (SPIFFE IDs, or local:NAME for operators on the unix socket).
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Upper bound on an approval's lifetime, whatever the obligation's ttl_s.
    max_ttl_s: int = 3600
    # Step-up flood control per subject: pending approvals held at once, new ones per minute.
    max_pending_per_subject: int = 10
    max_new_per_minute: int = 30
    # POSTs each new pending approval as JSON (chat, ticketing). Empty: off.
    notify_url: str = ""
    notify_attempts: int = 5
    notify_timeout_s: float = 5.0
    # The notification's JSON: "generic" ({"type": "approval.pending", ...}) or "slack"
    # (a Slack incoming-webhook message: text and blocks with a button to the approval).
    notify_format: str = "generic"
    # The approvals console as people reach it (https://approvals.example.com, the proxy in
    # front): every announcement of a pending approval links <console_url>/approvals/<id>.
    # Empty: no links anywhere.
    console_url: str = ""

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            check_address(self.listen)
            check(
                len(self.approvers) > 0,
                "approvers: required when listen is HOST:PORT (mTLS); list the SPIFFE IDs "
                "allowed to approve, or listen on a unix socket",
            )
        check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None,
            f"socket_mode: {self.socket_mode!r} is not octal permission bits like 0600",
        )
        for approver in self.approvers:
            check(
                SPIFFE_ID_RE.match(approver) is not None,
                f"approvers: {approver!r} is not a SPIFFE ID",
            )
        check(self.max_ttl_s > 0, "max_ttl_s: must be > 0")
        check(self.max_pending_per_subject > 0, "max_pending_per_subject: must be > 0")
        check(self.max_new_per_minute > 0, "max_new_per_minute: must be > 0")
        if self.notify_url:
            parts = urlsplit(self.notify_url)
            check(
                parts.scheme in ("http", "https") and bool(parts.hostname),
                # Not echoed: a webhook URL is a secret (Slack's carries its token).
                "notify_url: is not an http(s) URL",
            )
        check(self.notify_attempts >= 1, "notify_attempts: must be >= 1")
        check(self.notify_timeout_s > 0, "notify_timeout_s: must be > 0")
        check(
            self.notify_format in NOTIFY_FORMATS,
            f"notify_format: {self.notify_format!r} is not one of {', '.join(NOTIFY_FORMATS)}",
        )
        if self.console_url:
            problem = check_console_url(self.console_url)
            # Not echoed: a URL with userinfo carries a password.
            check(problem is None, f"console_url: {problem}")


def check_console_url(url: str) -> str | None:
    """Why ``url`` cannot be the console's public base URL, or ``None`` when it can.

    https (http only for a loopback host: a developer's console), a host, no userinfo
    (a password in a link is a secret in every chat message), no query or fragment (the
    approval's path is appended), a path of plain segments (the console's prefix behind its
    proxy), at most :data:`MAX_CONSOLE_URL_CHARS`, and only characters that cannot end a link
    in chat markup or HTML.
    """
    if len(url) > MAX_CONSOLE_URL_CHARS:
        return f"is longer than {MAX_CONSOLE_URL_CHARS} characters"
    if _URL_CHARS.fullmatch(url) is None:
        return "is not a URL of letters, digits and . _ ~ : / % - (no spaces, quotes or <>|)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL"
    del port  # parsed only to refuse a malformed one
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "is not an https URL"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return "is http to a host other than loopback: links must be https"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "carries userinfo: a link must not carry credentials"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "has a query or fragment: give the base the console is reached at"
    if _PATH_PREFIX.fullmatch(parts.path) is None:
        return (
            "has a path that is not plain segments (letters, digits, . _ ~ -; no %, no "
            "empty, dot or dot-dot segments)"
        )
    return None


def console_path_prefix(url: str) -> str:
    """The path the console is reached under (``/console`` for ``https://host/console/``),
    ``""`` for a console at the root or no console URL. ``url`` passed :func:`check_console_url`."""
    return urlsplit(url).path.rstrip("/") if url else ""


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
