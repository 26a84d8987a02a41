"""Transaction tokens between sidecars (draft-ietf-oauth-transaction-tokens), docs/a2a.md
"Provenance".

A token names one transaction: ``txn`` (its id), ``sub`` (the requester: who started it),
``purp`` (its purpose: the origin task's intent), ``azd.chain`` (the verified delegation chain,
outermost first), ``rctx.req_wl`` (the workload that minted it), ``iat``, ``exp`` and ``aud``
(the trust domain it is valid in, ``spiffe://TD``). It is a JWS (ES256, ``typ``
``txntoken+jwt``) signed with the minting sidecar's X.509-SVID key, the SVID's chain in
``x5c``; the next sidecar verifies that chain to its SPIFFE trust bundle, as the audit log's
SVID checkpoints are verified.

Only ever narrowed: a sidecar that received a token and calls on passes a new one whose
``prev`` is the token it received. Verifying checks every level down to the first sidecar's:
the same ``txn``, ``sub`` and ``purp``; the chain exactly the previous chain plus the previous
signer (the caller that sidecar verified); ``exp`` not later. The outermost token's signer
must be the caller that presented it. Anything else is ``txn_token_invalid``.

Every level's signer must be one of ``a2a_inbound.txn_issuers`` (sidecar SPIFFE IDs, or
prefixes ending in ``/``): an SVID of the trust domain alone cannot mint one. The first
token starts the chain itself: ``[]`` (its ``sub`` is the agent that started the transaction)
or ``[sub]`` (the caller that first sidecar verified). Every ``sub`` and chain entry is a
SPIFFE ID or a ``user:ISSUER/sub`` id, ``txn`` is ``txn-`` and 1..64 letters or digits, the
chain plus its presenter is at most ``delegation.max_links`` long, and ``rctx.status`` (only
in the first token) is exactly ``https://HOST[:PORT]/.well-known/agent-sidecar/txn/TXN``.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.a2a.errors import TxnTokenError
from sidecar.a2a.txn_status import STATUS_PATH
from sidecar.identity.subject import parse_spiffe_id

__all__ = ["TXN_HEADER", "TxnToken", "TxnTokenError", "issuer_allowed", "mint", "verify"]

TXN_HEADER = "Txn-Token"
TYP = "txntoken+jwt"
# Each level nests the one it came from (x1.34 with its x5c): 8 levels stay far below this.
MAX_TOKEN_CHARS = 48 * 1024
TXN_RE = re.compile(r"txn-[A-Za-z0-9]{1,64}")
USER_ID_RE = re.compile(r"user:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[\x21-\x7e]{1,256}")
MAX_X5C = 4
# Clock skew allowed on iat (a token from the future) and exp.
LEEWAY_S = 5


@dataclass(frozen=True)
class TxnToken:
    """A verified transaction token."""

    txn: str
    requester: str
    purpose: str
    chain: tuple[str, ...]
    signer: str  # the SPIFFE ID of the sidecar that minted this level
    exp: int
    iat: int
    depth: int  # how many sidecars it has passed (1: the first one's)
    token: str = field(default="", repr=False, compare=False)
    # From the first sidecar's token: who started the transaction, and where to ask whether
    # it is still active ("" when that sidecar has no inbound listener URL).
    origin: str = ""
    status_url: str = ""


def mint(
    snapshot: Any,
    *,
    txn: str,
    requester: str,
    purpose: str,
    chain: Sequence[str],
    ttl_s: int,
    audience: str,
    prev: TxnToken | None = None,
    now: float | None = None,
    status_url: str = "",
) -> str:
    """A token signed with ``snapshot``'s key (sidecar.identity.workload.Snapshot); under a
    received token ``prev``: the same transaction, narrowed (its exp at the latest)."""
    issued = int(time.time() if now is None else now)
    exp = issued + ttl_s
    claims: dict[str, Any] = {
        "txn": txn,
        "sub": requester,
        "purp": purpose,
        "azd": {"chain": list(chain)},
        "rctx": {"req_wl": snapshot.spiffe_id},
        "iat": issued,
        "exp": exp,
        "aud": audience,
    }
    if prev is not None:
        claims["exp"] = min(exp, prev.exp)
        claims["prev"] = prev.token
    elif status_url:  # the first sidecar: where later ones ask whether the txn is active
        claims["rctx"]["status"] = status_url
    x5c = [
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        for cert in snapshot.chain
    ]
    return jwt.encode(
        claims, snapshot.private_key, algorithm="ES256", headers={"typ": TYP, "x5c": x5c}
    )


def verify(
    token: str,
    *,
    bundles: Mapping[str, Sequence[x509.Certificate]],
    trust_domains: Sequence[str],
    caller: str,
    max_depth: int,
    issuers: Sequence[str],
    now: float | None = None,
) -> TxnToken:
    """The verified token presented by ``caller`` (its verified SPIFFE ID, or a user's id: a
    user never presents a token, so that never matches a signer). ``max_depth``:
    ``delegation.max_links``, bounding the levels and the chain plus its presenter;
    ``issuers``: who may sign a level (``a2a_inbound.txn_issuers``)."""
    at = time.time() if now is None else now
    checks = _Checks(bundles, trust_domains, tuple(issuers), max_depth, at)
    try:
        outer = _verify_level(token, checks, max_depth)
    except TxnTokenError:
        raise
    except Exception as exc:  # a claim of a shape no check foresaw: refused, never a 500
        raise TxnTokenError(f"the transaction token cannot be read ({type(exc).__name__})") from exc
    if outer.signer != caller:
        raise TxnTokenError(
            f"the transaction token was minted by {outer.signer}, not by the caller {caller}"
        )
    return outer


def issuer_allowed(signer: str, issuers: Sequence[str]) -> bool:
    """``signer`` is one of ``issuers`` (an exact SPIFFE ID, or a prefix ending in ``/``)."""
    return any(signer == i or (i.endswith("/") and signer.startswith(i)) for i in issuers)


@dataclass(frozen=True)
class _Checks:
    bundles: Mapping[str, Sequence[x509.Certificate]]
    trust_domains: Sequence[str]
    issuers: tuple[str, ...]
    max_links: int
    at: float


def _verify_level(token: str, checks: _Checks, depth_left: int) -> TxnToken:
    bundles, trust_domains, at = checks.bundles, checks.trust_domains, checks.at
    if depth_left <= 0:
        raise TxnTokenError("the transaction token has passed more sidecars than allowed")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TxnTokenError("the transaction token is not a JWS compact serialization")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TxnTokenError(f"the transaction token cannot be decoded: {exc}") from exc
    if header.get("alg") != "ES256" or header.get("typ") != TYP:
        raise TxnTokenError(f"the transaction token must be alg ES256, typ {TYP}")
    leaf, signer = _signer(header.get("x5c"), bundles, trust_domains, at)
    if not issuer_allowed(signer, checks.issuers):
        raise TxnTokenError(
            f"the transaction token's signer {signer} is not in a2a_inbound.txn_issuers"
        )
    audiences = [f"spiffe://{td}" for td in trust_domains]
    try:
        claims = jwt.decode(
            token,
            key=leaf.public_key(),
            algorithms=["ES256"],
            audience=audiences,
            options={"require": ["txn", "sub", "iat", "exp", "aud"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError as exc:
        raise TxnTokenError("the transaction token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TxnTokenError(f"the transaction token does not verify: {exc}") from exc
    parsed = _claims(claims, signer, token)
    if parsed.iat > at + LEEWAY_S:
        raise TxnTokenError("the transaction token was issued in the future")
    if len(parsed.chain) + 1 > checks.max_links:
        raise TxnTokenError("the transaction token's chain is longer than delegation.max_links")
    rctx = claims.get("rctx")
    if not isinstance(rctx, dict) or rctx.get("req_wl") != signer:
        raise TxnTokenError("the transaction token's rctx.req_wl is not its signer")
    prev_token = claims.get("prev")
    if prev_token is None:
        _check_root(parsed)
        status = rctx.get("status", "")
        _check_status_url(status, parsed.txn)
        return dataclasses.replace(parsed, origin=signer, status_url=status)
    if not isinstance(prev_token, str):
        raise TxnTokenError("the transaction token's prev is not a token")
    if "status" in rctx:
        raise TxnTokenError("only the first transaction token names a status URL")
    prev = _verify_level(prev_token, checks, depth_left - 1)
    if (parsed.txn, parsed.requester, parsed.purpose) != (prev.txn, prev.requester, prev.purpose):
        raise TxnTokenError("the transaction token changes the txn, sub or purp it came from")
    if parsed.chain != (*prev.chain, prev.signer):
        raise TxnTokenError(
            "the transaction token's chain is not the chain it came from plus that token's "
            "signer (a chain may only be extended by the verified caller)"
        )
    if parsed.exp > prev.exp:
        raise TxnTokenError("the transaction token outlives the token it came from")
    return TxnToken(
        parsed.txn,
        parsed.requester,
        parsed.purpose,
        parsed.chain,
        parsed.signer,
        parsed.exp,
        parsed.iat,
        prev.depth + 1,
        token,
        prev.origin,
        prev.status_url,
    )


def _check_root(token: TxnToken) -> None:
    """The first sidecar's token: the transaction starts at its agent (``[]``, the agent as
    ``sub``) or at the one caller that sidecar verified (``[sub]``)."""
    if token.chain == ():
        if token.requester.startswith("user:"):
            raise TxnTokenError("a transaction started by a person names them in its chain")
        return
    if token.chain != (token.requester,):
        raise TxnTokenError(
            "the first transaction token's chain must be [] or [sub]: a chain starts at its "
            "requester"
        )


def _check_status_url(status: Any, txn: str) -> None:
    if status == "":
        return
    if not isinstance(status, str) or len(status) > 512:
        raise TxnTokenError("the transaction token's rctx.status is not a URL")
    try:
        url = urlsplit(status)
        port = url.port
    except ValueError as exc:
        raise TxnTokenError("the transaction token's rctx.status is not a URL") from exc
    if (
        url.scheme != "https"
        or not url.hostname
        or url.username is not None
        or url.query
        or url.fragment
        or (port is not None and not 1 <= port <= 65535)
        or url.path != STATUS_PATH + txn
    ):
        raise TxnTokenError(
            f"the transaction token's rctx.status is not https://HOST[:PORT]{STATUS_PATH}<txn>"
        )


def _identity_ok(value: Any) -> bool:
    """A SPIFFE ID or a ``user:ISSUER/sub`` id (never a group, a wildcard or free text)."""
    if not isinstance(value, str) or len(value) > 2048:
        return False
    if USER_ID_RE.fullmatch(value):
        return True
    try:
        parse_spiffe_id(value)
    except ValueError:
        return False
    return True


def _claims(claims: Mapping[str, Any], signer: str, token: str) -> TxnToken:
    txn, sub, purp = claims.get("txn"), claims.get("sub"), claims.get("purp", "")
    azd = claims.get("azd")
    chain = azd.get("chain") if isinstance(azd, dict) else None
    if not (isinstance(txn, str) and TXN_RE.fullmatch(txn)):
        raise TxnTokenError("the transaction token's txn is not txn- and 1..64 letters or digits")
    if not (_identity_ok(sub) and isinstance(purp, str) and len(purp) <= 4096):
        raise TxnTokenError("the transaction token's sub or purp is not an identity and a string")
    if not (isinstance(chain, list) and all(_identity_ok(c) for c in chain)):
        raise TxnTokenError("the transaction token's azd.chain is not a list of identities")
    if len(set(chain)) != len(chain):
        raise TxnTokenError("the transaction token's chain names one identity twice")
    if not all(type(claims[k]) is int for k in ("iat", "exp")):
        raise TxnTokenError("the transaction token's iat and exp must be integers")
    return TxnToken(txn, sub, purp, tuple(chain), signer, claims["exp"], claims["iat"], 1, token)


def _signer(
    x5c: Any,
    bundles: Mapping[str, Sequence[x509.Certificate]],
    trust_domains: Sequence[str],
    at: float,
) -> tuple[x509.Certificate, str]:
    """The leaf certificate of ``x5c`` and its SPIFFE ID, once it chains to a trusted bundle."""
    if not (isinstance(x5c, list) and 1 <= len(x5c) <= MAX_X5C):
        raise TxnTokenError("the transaction token has no x5c certificate chain")
    try:
        certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (ValueError, TypeError) as exc:
        raise TxnTokenError("the transaction token's x5c is not base64 DER certificates") from exc
    leaf = certs[0]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        spiffe_id, trust_domain = parse_spiffe_id(uris[0] if len(uris) == 1 else "")
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise TxnTokenError("the transaction token's signer is not an X.509-SVID") from exc
    if trust_domain not in trust_domains:
        raise TxnTokenError(f"the transaction token's signer's trust domain {trust_domain!r} "
                            "is not trusted")  # fmt: skip
    current, path = leaf, [leaf]
    while True:
        if (
            not current.not_valid_before_utc.timestamp()
            <= at
            <= (current.not_valid_after_utc.timestamp())
        ):
            raise TxnTokenError("a certificate of the transaction token's x5c is not valid now")
        if any(_issued(current, ca) for ca in bundles.get(trust_domain, ())):
            return leaf, spiffe_id
        current = next(
            (c for c in certs[1:] if c not in path and _is_ca(c) and _issued(current, c)), None
        )
        if current is None:
            raise TxnTokenError(
                f"the transaction token's signer is not issued by the {trust_domain} bundle"
            )
        path.append(current)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # any failure means "not issued by"
        return False
    return True
