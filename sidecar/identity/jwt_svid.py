"""JWT-SVID validation per the SPIFFE JWT-SVID standard, with one specific code per failure.

Checked, in order: three base64url parts; ``alg`` one of RS/ES/PS 256/384/512 (so ``none`` and
HMAC are refused); ``typ``, if present, ``JWT`` or ``JOSE``; a ``kid``; the claims ``sub``,
``aud`` and ``exp`` present; ``sub`` a SPIFFE ID whose trust domain has a JWT bundle; ``kid``
known in that bundle; then the signature with that key and algorithm, ``exp`` not passed,
``nbf`` reached, and our audience in ``aud``. py-spiffe's ``JwtSvid.parse_and_validate`` is
not used: it does not require ``exp`` and its errors do not say which check failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.identity.errors import IdentityError
from sidecar.identity.subject import parse_spiffe_id

__all__ = ["ALGORITHMS", "JwtBundles", "VerifiedJwtSvid", "key_fits", "validate_jwt_svid"]

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
_TYPES = ("JWT", "JOSE")
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

# trust domain name -> key id -> public key
JwtBundles = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class VerifiedJwtSvid:
    spiffe_id: str
    audience: tuple[str, ...]
    expires_at: int
    claims: dict[str, Any]


def _fail(code: str, message: str) -> IdentityError:
    return IdentityError(message, code=code)


def validate_jwt_svid(token: str, *, audience: str, bundles: JwtBundles) -> VerifiedJwtSvid:
    """Validate ``token`` for ``audience``; raise :class:`IdentityError` with a specific code."""
    if not token or token.count(".") != 2:
        raise _fail("jwt_malformed", "the token is not a JWS compact serialization")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _fail("jwt_malformed", f"the token cannot be decoded: {exc}") from exc
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _fail("jwt_bad_algorithm", f"alg {alg!r} is not allowed for JWT-SVIDs")
    typ = header.get("typ")
    if typ is not None and typ not in _TYPES:
        raise _fail("jwt_bad_type", f"typ {typ!r} is not JWT or JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _fail("jwt_missing_kid", "the token header has no kid")
    for claim in ("sub", "aud", "exp"):
        if unverified.get(claim) in (None, "", []):
            raise _fail("jwt_missing_claim", f"the token has no {claim!r} claim")
    try:
        spiffe_id, trust_domain = parse_spiffe_id(unverified["sub"])
    except ValueError as exc:
        raise _fail("jwt_bad_subject", f"sub is not a SPIFFE ID: {exc}") from exc
    keys = bundles.get(trust_domain)
    if keys is None:
        raise _fail("untrusted_domain", f"trust domain {trust_domain!r} is not trusted")
    key = keys.get(kid)
    if key is None:
        raise _fail("jwt_unknown_kid", f"kid {kid!r} is not in the {trust_domain} JWT bundle")
    if not key_fits(alg, key):
        raise _fail("jwt_bad_signature", f"the bundle key {kid!r} cannot verify alg {alg}")
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=audience,
            options={"require": ["sub", "aud", "exp"], "verify_iat": False},
            leeway=0,
        )
    except jwt.ExpiredSignatureError as exc:
        raise _fail("jwt_expired", "the token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise _fail("jwt_not_yet_valid", "the token is not valid yet (nbf)") from exc
    except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
        raise _fail("jwt_audience_mismatch", f"the token is not for audience {audience!r}") from exc
    except (
        jwt.InvalidSignatureError,
        jwt.InvalidKeyError,
        jwt.InvalidAlgorithmError,
        TypeError,
        ValueError,
    ) as exc:
        raise _fail("jwt_bad_signature", "the token's signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise _fail("jwt_invalid", f"the token is not valid: {exc}") from exc
    aud = claims["aud"]
    return VerifiedJwtSvid(
        spiffe_id=spiffe_id,
        audience=tuple([aud] if isinstance(aud, str) else aud),
        expires_at=int(claims["exp"]),
        claims=claims,
    )


def key_fits(alg: str, key: Any) -> bool:
    """The bundle key's type (and curve) matches the token's algorithm family."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[alg]
