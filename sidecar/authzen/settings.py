"""The ``authzen`` section: the AuthZEN Authorization API listener."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.validate import SPIFFE_ID_RE, check, check_address

__all__ = ["AuthZenSettings"]


@dataclass(frozen=True)
class AuthZenSettings:
    """The AuthZEN Authorization API 1.0: other enforcement points ask the same Rego."""

    # unix:///PATH (who may connect: socket_mode), or HOST:PORT with mTLS: the sidecar's
    # X.509-SVID, and callers present theirs, one of ``callers``. Empty: off.
    listen: str = ""
    callers: tuple[str, ...] = ()
    socket_mode: str = "0600"
    # The PDP identifier published in /.well-known/authzen-configuration (an https URL);
    # default: https://HOST:PORT of the listener, or https://localhost for a unix socket.
    pdp_url: str = ""
    # Evaluations in one boxcar request, at most.
    max_evaluations: int = 64

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            check_address(self.listen)
            check(
                bool(self.callers),
                "callers: required with a TCP listener (the SPIFFE IDs allowed to ask)",
            )
        for caller in self.callers:
            check(SPIFFE_ID_RE.match(caller) is not None, f"callers: {caller!r} is not a SPIFFE ID")
        check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None
            and int(self.socket_mode, 8) & 0o007 == 0,
            f"socket_mode: {self.socket_mode!r} must be octal like 0600 and give others nothing",
        )
        if self.pdp_url:
            parts = urlsplit(self.pdp_url)
            check(
                parts.scheme == "https" and not parts.query and not parts.fragment,
                "pdp_url: an https URL without query or fragment",
            )
        check(1 <= self.max_evaluations <= 1000, "max_evaluations: 1..1000")
