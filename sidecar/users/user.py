"""The verified end user an agent acts for, as policy sees it in ``input.user``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["User"]


@dataclass(frozen=True)
class User:
    """Claims of a verified user token. ``token`` is kept only to exchange it (RFC 8693): it
    never reaches policy input, the audit log, a log line or an upstream."""

    sub: str
    iss: str
    issuer: str  # the configured issuer's name (users.issuers.NAME)
    expires_at: int
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    act: dict[str, Any] | None = None
    may_act: dict[str, Any] | None = None
    # Other names the person goes by (the console's proxy names approvers by e-mail, while most
    # IdPs issue an opaque ``sub``): kept so that they cannot approve their own calls
    # (sidecar/approvals/selfapproval.py). ``email_verified`` is recorded, not required: these
    # names only ever refuse, so an unverified one can only make that rule refuse more.
    email: str = ""
    email_verified: bool = False
    preferred_username: str = ""
    token: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sub or not self.iss:
            raise ValueError("a user has a sub and an iss")

    def to_input(self) -> dict[str, Any]:
        """``input.user`` of policy input v1 (no token, no raw claims beyond these)."""
        doc: dict[str, Any] = {
            "sub": self.sub,
            "iss": self.iss,
            "issuer": self.issuer,
            "groups": list(self.groups),
            "roles": list(self.roles),
            "expires_at": self.expires_at,
        }
        if self.act is not None:
            doc["act"] = self.act
        if self.may_act is not None:
            doc["may_act"] = self.may_act
        return doc

    def to_record(self) -> dict[str, Any]:
        """What the audit record (and an approval) keeps: who, by each name the token gives,
        from where; nothing that could be replayed."""
        doc: dict[str, Any] = {"sub": self.sub, "iss": self.iss}
        if self.email:
            doc |= {"email": self.email, "email_verified": self.email_verified}
        if self.preferred_username:
            doc["preferred_username"] = self.preferred_username
        return doc
