"""The ``users`` section: the end user an agent acts for, and the issuers of their tokens."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.validate import check, is_local_address

__all__ = ["IssuerSettings", "UserSettings"]


@dataclass(frozen=True)
class IssuerSettings:
    """An OpenID Connect issuer whose tokens name the user an agent acts for."""

    # Must equal the tokens' ``iss`` and the discovery document's ``issuer``.
    issuer: str
    # Accepted audiences (the token's ``aud`` must contain one).
    audiences: tuple[str, ...]
    # Default: from ``{issuer}/.well-known/openid-configuration``.
    jwks_uri: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    # Claims that hold the user's groups and roles (a list of strings, or one string).
    groups_claim: str = "groups"
    roles_claim: str = "roles"
    # Clock skew allowed on exp / nbf / iat.
    leeway_s: float = 30.0
    # PEM bundle for the issuer's TLS (default: the system's CAs).
    ca_file: Path | None = None
    # Keys are fetched again after this long (and at once for an unknown kid, at most once
    # per refetch_min_s).
    jwks_max_age_s: float = 300.0
    refetch_min_s: float = 10.0
    fetch_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        check(
            parts.scheme == "https"
            or (
                parts.scheme == "http" and is_local_address(f"{parts.hostname}:{parts.port or 80}")
            ),
            f"issuer: {self.issuer!r} must be https (http only on loopback, for tests)",
        )
        check(bool(self.audiences), "audiences: at least one audience is required")
        for alg in self.algorithms:
            check(
                alg
                in (
                    "RS256",
                    "RS384",
                    "RS512",
                    "ES256",
                    "ES384",
                    "ES512",
                    "PS256",
                    "PS384",
                    "PS512",
                ),
                f"algorithms: {alg!r} is not allowed (asymmetric RS/ES/PS only; never none or "
                "HMAC)",
            )
        check(bool(self.algorithms), "algorithms: at least one")
        check(self.leeway_s >= 0 and self.leeway_s <= 300, "leeway_s: 0..300")
        check(self.jwks_max_age_s > 0 and self.refetch_min_s >= 0, "jwks_max_age_s: > 0")
        check(self.fetch_timeout_s > 0, "fetch_timeout_s: must be > 0")


@dataclass(frozen=True)
class UserSettings:
    """The end user an agent acts for: a token it passes along, verified against ``issuers``."""

    # The gRPC metadata key and front-door header that carry the user's token.
    header: str = "x-user-token"
    issuers: Mapping[str, IssuerSettings] = field(default_factory=dict)
    # A verified token is trusted again without re-verifying for this long (never past its
    # exp); agents send the same token on every call. 0: verify every call.
    cache_s: float = 60.0
    cache_entries: int = 1024

    def __post_init__(self) -> None:
        check(
            re.fullmatch(r"[a-z0-9-]+", self.header) is not None
            and self.header not in ("authorization", "traceparent"),
            f"header: {self.header!r} must be a lowercase header name other than "
            "authorization and traceparent",
        )
        seen = [i.issuer for i in self.issuers.values()]
        check(len(seen) == len(set(seen)), "issuers: two entries for one issuer URL")
        check(0 <= self.cache_s <= 300, "cache_s: 0..300")
        check(self.cache_entries >= 1, "cache_entries: must be >= 1")
