"""Errors of the user context: the agent's user token is refused, or cannot be checked.

IdentityError (sidecar.identity.errors)
└── UserTokenError            a user token that does not verify: ``user_token_*`` codes
    └── IssuerUnavailable     the issuer's keys cannot be fetched: ``user_issuer_unavailable``
"""

from __future__ import annotations

from sidecar.identity.errors import IdentityError

__all__ = ["IssuerUnavailable", "UserTokenError"]


class UserTokenError(IdentityError):
    """The user token is invalid; the call is denied with ``code`` (never relayed)."""

    code = "user_token_invalid"


class IssuerUnavailable(UserTokenError):
    """No usable keys for the issuer: discovery or JWKS failed and nothing is cached."""

    code = "user_issuer_unavailable"
