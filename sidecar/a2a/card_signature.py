"""A2A agent card signatures (A2A 1.0 "Agent Card Signing"): RFC 7515 JWS with a detached
payload, the RFC 8785 canonical form of the card without ``signatures``.

Each entry of ``card.signatures`` is ``{"protected", "signature", "header"?}``; the signing
input is ``protected + "." + BASE64URL(payload)``. A 1.0 card is first projected onto the
AgentCard schema (card_schema.py: fields outside it, such as the 0.3 compatibility fields an
SDK server adds, are not signed), then empty strings, lists and objects are dropped (proto3
JSON omits them), so a card signed by either side verifies on the other.

Keys come only from what the operator configured: the peer's ``card_keys`` JWKS (by ``kid``),
or an ``x5c`` chain that verifies to the SPIFFE trust bundle and whose leaf is the peer's
configured SPIFFE ID. A ``jku`` is never fetched (whoever forged the card would choose it).
Refused, each with a stable code: ``alg: none`` or any algorithm not in :data:`ALGORITHMS`
(``card_alg_refused``), a ``kid`` without a configured key (``card_key_unknown``), a chain
for another identity (``card_signer_mismatch``), a malformed entry or header
(``card_signature_malformed``), a signature that does not verify (``card_signature_invalid``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sidecar.a2a.card_schema import project
from sidecar.a2a.errors import CardError, CardSignatureError
from sidecar.a2a.jcs import JcsError, canonicalize
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = [
    "ALGORITHMS",
    "Verified",
    "card_payload",
    "load_card_keys",
    "sign_card",
    "sign_card_with_svid",
    "signed_content",
    "signed_view",
    "verify_card",
]

ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_CURVES = {"ES256": (ec.SECP256R1, hashes.SHA256, 32), "ES384": (ec.SECP384R1, hashes.SHA384, 48)}
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_SIGNATURES = 8
_MAX_X5C = 5
_MIN_RSA_BITS = 2048
_HEADER_KEYS = frozenset({"alg", "kid", "typ", "jku", "x5c", "cty", "x5t#S256"})


@dataclass(frozen=True)
class Verified:
    """Who signed: the SPIFFE ID of an ``x5c`` leaf, else the configured ``kid``."""

    signer: str
    kid: str
    alg: str


def signed_view(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a signature of ``card`` covers: a 1.0 card (``supportedInterfaces``) projected
    onto the AgentCard schema (card_schema.py), a 0.3 card whole; ``signatures`` excluded."""
    body = {k: v for k, v in card.items() if k != "signatures"}
    return project(body) if "supportedInterfaces" in body else body


def signed_content(card: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly what a signature of ``card`` covers, as a card: :func:`signed_view` without the
    empty strings, lists and objects (proto3 JSON omits them, so a signature cannot tell them
    apart). What the sidecar keeps, pins, digests and serves of a card is this, so nothing the
    signature does not cover (an empty ``securityRequirements: [{}]`` added after signing)
    reaches the agent or policy."""
    try:
        return _without_empty(signed_view(card)) or {}
    except JcsError as exc:
        raise CardError(
            f"the card has no canonical form: {exc}",
            code="card_malformed",
            outcome="peer_bad_response",
        ) from exc


def card_payload(card: Mapping[str, Any]) -> bytes:
    """The bytes a card signature covers (and the card digest is taken over)."""
    try:
        return canonicalize(signed_content(card))
    except JcsError as exc:
        raise CardError(
            f"the card has no canonical form: {exc}",
            code="card_malformed",
            outcome="peer_bad_response",
        ) from exc


def _without_empty(value: Any, depth: int = 0) -> Any:
    if depth > 64:
        raise JcsError("nests deeper than 64")
    if isinstance(value, dict):
        kept = {k: c for k, v in value.items() if (c := _without_empty(v, depth + 1)) is not None}
        return kept or None
    if isinstance(value, list):
        items = [c for v in value if (c := _without_empty(v, depth + 1)) is not None]
        return items or None
    return None if value == "" else value


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not text or not _B64URL.match(text) or len(text) % 4 == 1:
        raise CardSignatureError(f"{what} is not base64url", code="card_signature_malformed")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_card_keys(path: Path) -> dict[str, Any]:
    """A JWKS file -> kid -> public key. Refuses a file without a usable public signing key,
    a key without ``kid``, a repeated ``kid`` and private or symmetric key material."""
    try:
        document = loads_strict(path.read_bytes(), "the JWKS")
    except (OSError, StrictJsonError) as exc:
        raise CardError(f"card_keys {path}: {exc}", code="card_keys_invalid") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CardError(f"card_keys {path}: not a JWKS (no keys)", code="card_keys_invalid")
    found: dict[str, Any] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not kid or kid in found:
            raise CardError(
                f"card_keys {path}: every key needs its own kid", code="card_keys_invalid"
            )
        if entry.get("kty") == "oct" or "d" in entry:
            raise CardError(
                f"card_keys {path}: key {kid!r} is secret material; give public keys only",
                code="card_keys_invalid",
            )
        try:
            found[kid] = jwt.PyJWK.from_dict(dict(entry)).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise CardError(
                f"card_keys {path}: key {kid!r} is unusable ({type(exc).__name__})",
                code="card_keys_invalid",
            ) from exc
    return found


def verify_card(
    card: Mapping[str, Any],
    *,
    keys: Mapping[str, Any],
    spiffe_id: str = "",
    bundles: Mapping[str, Sequence[x509.Certificate]] | None = None,
    now: dt.datetime | None = None,
) -> Verified:
    """The first signature of ``card`` that verifies with a configured key; else the reason
    the first one does not (:class:`CardSignatureError`)."""
    signatures = card.get("signatures")
    if not signatures:
        raise CardSignatureError("the card is not signed", code="card_unsigned")
    if not isinstance(signatures, list) or len(signatures) > _MAX_SIGNATURES:
        raise CardSignatureError(
            f"signatures must be a list of at most {_MAX_SIGNATURES}",
            code="card_signature_malformed",
        )
    payload = _b64url_encode(card_payload(card))
    first: CardSignatureError | None = None
    for entry in signatures:
        try:
            return _verify_one(entry, payload, keys, spiffe_id, bundles or {}, now)
        except CardSignatureError as exc:
            first = first or exc
    assert first is not None
    raise first


def _verify_one(
    entry: Any,
    payload: str,
    keys: Mapping[str, Any],
    spiffe_id: str,
    bundles: Mapping[str, Sequence[x509.Certificate]],
    now: dt.datetime | None,
) -> Verified:
    if not isinstance(entry, dict) or not {"protected", "signature"} <= set(entry):
        raise CardSignatureError(
            "a signature needs protected and signature", code="card_signature_malformed"
        )
    extra = sorted(set(entry) - {"protected", "signature", "header"})
    if extra:
        raise CardSignatureError(
            f"a signature has unknown fields {extra}",
            code="card_signature_malformed",
        )
    try:
        header = loads_strict(_b64url_decode(entry["protected"], "protected"), "the header")
    except (StrictJsonError, UnicodeDecodeError) as exc:
        raise CardSignatureError(
            "the protected header is not a JSON object", code="card_signature_malformed"
        ) from exc
    unprotected = entry.get("header") or {}
    if not isinstance(header, dict) or not isinstance(unprotected, dict):
        raise CardSignatureError(
            "the protected header is not a JSON object", code="card_signature_malformed"
        )
    if "crit" in header or set(header) & set(unprotected):
        raise CardSignatureError(
            "crit, or a parameter in both headers, is not accepted",
            code="card_signature_malformed",
        )
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise CardSignatureError(
            f"algorithm {alg!r} is refused (accepted: {', '.join(ALGORITHMS)})",
            code="card_alg_refused",
        )
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise CardSignatureError("kid must be a string", code="card_signature_malformed")
    if "x5c" in header:
        key, signer = _chain_key(header["x5c"], spiffe_id, bundles, now), spiffe_id
    elif kid and kid in keys:
        key, signer = keys[kid], kid
    else:
        raise CardSignatureError(
            f"no configured card key has kid {kid!r} (card_keys) and no x5c chain was given",
            code="card_key_unknown",
        )
    signature = _b64url_decode(entry["signature"], "signature")
    signing_input = f"{entry['protected']}.{payload}".encode("ascii")
    _check(alg, key, signature, signing_input)
    return Verified(signer=signer, kid=kid, alg=alg)


def _chain_key(
    x5c: Any,
    spiffe_id: str,
    bundles: Mapping[str, Sequence[x509.Certificate]],
    now: dt.datetime | None,
) -> Any:
    """The leaf's public key, once the chain verifies to the expected SPIFFE ID's bundle."""
    if not spiffe_id:
        raise CardSignatureError(
            "an x5c-signed card needs the peer's spiffe_id configured", code="card_key_unknown"
        )
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= _MAX_X5C:
        raise CardSignatureError(
            f"x5c must list 1..{_MAX_X5C} certificates", code="card_signature_malformed"
        )
    try:
        chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (TypeError, ValueError, binascii.Error) as exc:
        raise CardSignatureError(
            "x5c holds something that is not a certificate", code="card_signature_malformed"
        ) from exc
    trust_domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    authorities = list(bundles.get(trust_domain, ()))
    if not authorities:
        raise CardSignatureError(f"no trust bundle for {trust_domain}", code="card_signer_mismatch")
    builder = PolicyBuilder().store(Store(authorities))
    if now is not None:
        builder = builder.time(now)
    try:
        verified = builder.build_client_verifier().verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise CardSignatureError(
            f"the x5c chain does not verify to the {trust_domain} bundle",
            code="card_signer_mismatch",
        ) from exc
    uris = [
        n.value for n in verified.subjects or () if isinstance(n, x509.UniformResourceIdentifier)
    ]
    if uris != [spiffe_id]:
        raise CardSignatureError(
            f"the card is signed by {uris}, not the peer's {spiffe_id}",
            code="card_signer_mismatch",
        )
    return chain[0].public_key()


def _check(alg: str, key: Any, signature: bytes, data: bytes) -> None:
    bad = CardSignatureError("the card signature does not verify", code="card_signature_invalid")
    try:
        if alg in _CURVES:
            curve, digest, size = _CURVES[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
                raise bad
            if len(signature) != 2 * size:
                raise bad
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest()))
        elif alg in ("RS256", "PS256"):
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < _MIN_RSA_BITS:
                raise bad
            key.verify(signature, data, _rsa_padding(alg), hashes.SHA256())
        else:  # EdDSA
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise bad
            key.verify(signature, data)
    except InvalidSignature as exc:
        raise bad from exc


def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "PS256":
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return padding.PKCS1v15()


def _alg_for(key: Any, alg: str | None) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        natural = {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "")
    elif isinstance(key, rsa.RSAPrivateKey):
        natural = "RS256" if alg != "PS256" else "PS256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        natural = "EdDSA"
    else:
        natural = ""
    if not natural or (alg and alg != natural):
        raise CardError(f"cannot sign {alg or 'a card'} with this key", code="card_key_unusable")
    return natural


def sign_card(
    card: Mapping[str, Any],
    key: Any,
    *,
    kid: str = "",
    x5c: Sequence[x509.Certificate] = (),
    alg: str | None = None,
) -> dict[str, Any]:
    """A copy of ``card`` with one more signature by ``key`` (a private key), naming ``kid``
    and/or carrying the ``x5c`` chain (leaf first)."""
    algorithm = _alg_for(key, alg)
    header: dict[str, Any] = {"alg": algorithm, "typ": "JOSE"}
    if kid:
        header["kid"] = kid
    if x5c:
        header["x5c"] = [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in x5c
        ]
    protected = _b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    data = f"{protected}.{_b64url_encode(card_payload(card))}".encode("ascii")
    if algorithm in _CURVES:
        _, digest, size = _CURVES[algorithm]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest())))
        raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif algorithm in ("RS256", "PS256"):
        raw = key.sign(data, _rsa_padding(algorithm), hashes.SHA256())
    else:
        raw = key.sign(data)
    signed = copy.deepcopy(dict(card))
    signed["signatures"] = [
        *(signed.get("signatures") or []),
        {"protected": protected, "signature": _b64url_encode(raw)},
    ]
    return signed


def sign_card_with_svid(card: Mapping[str, Any], snapshot: Any) -> dict[str, Any]:
    """``card`` signed with the sidecar's X.509-SVID key (an identity ``Snapshot``): the
    chain rides in ``x5c``, and ``kid`` is the SPIFFE ID, so a peer verifies it against its
    trust bundle without any key distributed beforehand."""
    return sign_card(card, snapshot.private_key, kid=snapshot.spiffe_id, x5c=snapshot.chain)
