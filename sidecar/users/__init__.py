"""The end user an agent acts for: a verified OIDC token in ``input.user``, and the token
exchange (RFC 8693) that turns it into a per-user upstream credential.

    UserVerifier   verify a user token (discovery, JWKS with rotation) -> User
    TokenExchanger exchange it at the authorization server, the JWT-SVID as client assertion
"""

from __future__ import annotations

from sidecar.users.errors import IssuerUnavailable, UserTokenError
from sidecar.users.exchange import TokenExchanger
from sidecar.users.user import User
from sidecar.users.verify import UserVerifier

__all__ = ["IssuerUnavailable", "TokenExchanger", "User", "UserTokenError", "UserVerifier"]
