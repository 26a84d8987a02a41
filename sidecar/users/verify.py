"""Verify the user token an agent passes along: OIDC discovery, JWKS cached with rotation.

Checked, in order, each failure with its own code: three base64url parts, and ``exp``,
``nbf`` and ``iat`` (where present) JSON numbers, finite, as RFC 7519's NumericDate is
(``user_token_malformed``); ``alg`` in the issuer's allow-list, which holds only RS/ES/PS
algorithms, so ``none`` and HMAC are always refused (``user_token_bad_algorithm``); ``iss``
a configured issuer (``user_token_untrusted_issuer``); the ``kid`` in the issuer's JWKS,
fetched again once when unknown, at most every ``refetch_min_s``, so a rotated key is picked
up (``user_token_unknown_kid``); then the signature (``user_token_bad_signature``), ``exp``
and ``nbf`` with ``leeway_s`` (``user_token_expired``, ``user_token_not_yet_valid``), an
accepted audience in ``aud`` (``user_token_audience_mismatch``), and ``sub``
(``user_token_missing_claim``). ``email`` and ``preferred_username``, when they are
non-empty strings, are kept beside ``sub`` (the names approvers go by: the user may not
approve their own calls); anything else in them is ignored. Keys that cannot be fetched,
with none cached, are ``user_issuer_unavailable``.

Discovery and JWKS are fetched on the event loop (aiohttp), never blocking it; one fetch
per issuer at a time. The token is never logged, and no error message quotes it.

Agents send the same token with every call, so a verified token is kept (``users.cache_s``,
60 s, never past its ``exp``; at most ``cache_entries``, the oldest dropped first): a repeated
token costs a dictionary lookup instead of ~0.2 ms of signature and claims checks. A key
the issuer withdraws therefore stops a token already verified within ``cache_s``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from sidecar.identity.jwt_svid import key_fits
from sidecar.users.errors import IssuerUnavailable, UserTokenError
from sidecar.users.settings import IssuerSettings, UserSettings
from sidecar.users.user import User

__all__ = ["UserVerifier"]

log = logging.getLogger(__name__)
_MAX_DOCUMENT_BYTES = 1024 * 1024


def _fail(code: str, message: str) -> UserTokenError:
    return UserTokenError(message, code=code)


@dataclass
class _Keys:
    by_kid: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = 0.0  # monotonic; 0: never
    tried_at: float = -1e9
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UserVerifier:
    """Verifies user tokens against the configured issuers (``users.issuers``)."""

    def __init__(self, settings: UserSettings) -> None:
        self._issuers: dict[str, tuple[str, IssuerSettings]] = {
            issuer.issuer: (name, issuer) for name, issuer in settings.issuers.items()
        }
        self._keys: dict[str, _Keys] = {}
        self._session: aiohttp.ClientSession | None = None
        self._cache_s = settings.cache_s
        self._cache_entries = settings.cache_entries
        # token -> (user, trusted until: unix seconds)
        self._verified: collections.OrderedDict[str, tuple[User, float]] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    async def verify(self, token: str) -> User:
        """The verified user, or :class:`UserTokenError` with the failed check's code."""
        cached = self._verified.get(token) if isinstance(token, str) else None
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        self._verified.pop(token, None)
        user = await self._verify(token)
        if self._cache_s > 0:
            self._verified[token] = (user, min(user.expires_at, time.time() + self._cache_s))
            while len(self._verified) > self._cache_entries:
                self._verified.popitem(last=False)
        return user

    async def _verify(self, token: str) -> User:
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 16384:
            raise _fail("user_token_malformed", "the user token is not a JWS compact serialization")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _fail("user_token_malformed", "the user token cannot be decoded") from exc
        _check_numeric_dates(unverified)
        iss = unverified.get("iss")
        found = self._issuers.get(iss) if isinstance(iss, str) else None
        if found is None:
            raise _fail("user_token_untrusted_issuer", "the user token's issuer is not configured")
        name, issuer = found
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise _fail("user_token_bad_algorithm", f"alg {alg!r} is not allowed for issuer {name}")
        key = await self._key(issuer, header.get("kid"))
        if not key_fits(alg, key):
            raise _fail("user_token_bad_signature", "the issuer's key cannot verify this alg")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["iss", "aud", "exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _fail("user_token_expired", "the user token has expired") from exc
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError) as exc:
            raise _fail("user_token_not_yet_valid", "the user token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise _fail(
                "user_token_audience_mismatch", f"the user token is not for {issuer.audiences}"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _fail("user_token_missing_claim", f"the user token has no {exc.claim!r}") from exc
        except jwt.PyJWTError as exc:
            raise _fail(
                "user_token_bad_signature", "the user token's signature does not verify"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise _fail(
                "user_token_bad_signature", "the user token's signature does not verify"
            ) from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _fail("user_token_missing_claim", "the user token's sub is not a string")
        return User(
            sub=claims["sub"],
            iss=issuer.issuer,
            issuer=name,
            expires_at=int(claims["exp"]),
            groups=_strings(claims.get(issuer.groups_claim)),
            roles=_strings(claims.get(issuer.roles_claim)),
            act=claims["act"] if isinstance(claims.get("act"), dict) else None,
            may_act=claims["may_act"] if isinstance(claims.get("may_act"), dict) else None,
            email=_name(claims.get("email")),
            email_verified=claims.get("email_verified") in (True, "true"),
            preferred_username=_name(claims.get("preferred_username")),
            token=token,
        )

    async def _key(self, issuer: IssuerSettings, kid: Any) -> Any:
        keys = self._keys.setdefault(issuer.issuer, _Keys())
        now = time.monotonic()
        stale = now - keys.fetched_at > issuer.jwks_max_age_s
        if stale or (kid not in keys.by_kid and now - keys.tried_at >= issuer.refetch_min_s):
            await self._refresh(issuer, keys, stale=stale)
        if not keys.by_kid:
            raise IssuerUnavailable(f"no keys for issuer {issuer.issuer} (JWKS unreachable)")
        if kid is None and len(keys.by_kid) == 1:
            return next(iter(keys.by_kid.values()))
        key = keys.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _fail(
                "user_token_unknown_kid", "the user token's kid is not in the issuer's JWKS"
            )
        return key

    async def _refresh(self, issuer: IssuerSettings, keys: _Keys, *, stale: bool) -> None:
        async with keys.lock:
            now = time.monotonic()
            if now - keys.tried_at < issuer.refetch_min_s and not (stale and not keys.by_kid):
                return  # another call just fetched (or failed to)
            keys.tried_at = now
            try:
                keys.by_kid = await self._fetch_keys(issuer)
                keys.fetched_at = time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError, ssl.SSLError, OSError) as exc:
                # Keep the last good keys: a brief outage of the issuer stops nobody.
                log.warning(
                    "user token issuer keys unavailable",
                    extra={"issuer": issuer.issuer, "error": type(exc).__name__},
                )

    async def _fetch_keys(self, issuer: IssuerSettings) -> dict[str, Any]:
        jwks_uri = issuer.jwks_uri
        if not jwks_uri:
            url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            discovery = await self._get_json(url, issuer)
            if discovery.get("issuer") != issuer.issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document has no jwks_uri")
        document = await self._get_json(jwks_uri, issuer)
        found: dict[str, Any] = {}
        for entry in document.get("keys", []) if isinstance(document, Mapping) else []:
            if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(dict(entry)).key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # an unusable key (symmetric, unknown type) is skipped, not fatal
            found[str(entry.get("kid", ""))] = key
        if not found:
            raise ValueError("the JWKS has no usable signing key")
        return found

    async def _get_json(self, url: str, issuer: IssuerSettings) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        context: ssl.SSLContext | bool = True
        if issuer.ca_file is not None:
            context = ssl.create_default_context(cafile=str(issuer.ca_file))
        timeout = aiohttp.ClientTimeout(total=issuer.fetch_timeout_s)
        async with self._session.get(url, ssl=context, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"{url}: HTTP {response.status}")
            body = await response.content.read(_MAX_DOCUMENT_BYTES + 1)
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url}: larger than {_MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url}: not a JSON object")
        return document

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _check_numeric_dates(claims: Mapping[str, Any]) -> None:
    """RFC 7519 NumericDate is a JSON number: PyJWT would take ``"9999999999"`` (a string)
    or ``true`` through ``int()``, and fail on ``Infinity`` with an uncaught error."""
    for name in _TIME_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise _fail(
                "user_token_malformed", f"the user token's {name} is not a NumericDate (a number)"
            )


def _name(value: Any) -> str:
    """A name claim (``email``, ``preferred_username``): a non-empty string, else none."""
    return value.strip() if isinstance(value, str) and value.strip() else ""


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
