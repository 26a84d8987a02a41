"""The end user an agent acts for: a verified OIDC token in ``input.user``, and the token
exchange (RFC 8693) that turns it into a per-user upstream credential.

    UserVerifier   verify a user token (discovery, JWKS with rotation) -> User
    TokenExchanger exchange it at the authorization server, the JWT-SVID as client assertion
"""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "IssuerSettings",
    "IssuerUnavailable",
    "TokenExchanger",
    "User",
    "UserSettings",
    "UserTokenError",
    "UserVerifier",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.users.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "IssuerUnavailable": "errors",
        "UserTokenError": "errors",
        "TokenExchanger": "exchange",
        "User": "user",
        "UserVerifier": "verify",
        "IssuerSettings": "settings",
        "UserSettings": "settings",
    },
)
