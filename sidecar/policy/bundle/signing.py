"""OPA's bundle signatures: ``.signatures.json`` holds one JWT whose ``files`` claim lists every
file's digest; the JWT is signed with a key the sidecar knows by id.

Hashing follows OPA's ``bundle/hash.go`` exactly: Rego and other files are hashed as raw bytes;
``data.json`` and ``.manifest`` are parsed and hashed in canonical form (object keys sorted,
no whitespace, numbers as written, strings as Go's encoder writes them without HTML escaping),
so whitespace does not change a signature. Verification follows ``bundle/verify.go``: the key
id comes from the configuration, else the JWT header's ``kid``, else the ``keyid`` claim; the
scope must equal the configured one (else the key's); every file must be listed with a
matching digest, and every listed file must be present. We are stricter than OPA in three
places, each refused with a reason: a header ``alg`` other than the key's (``none`` included),
MD5/SHA-1 digests, and a file listed twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import load_pem_x509_certificate

from sidecar.policy.bundle.archive import MANIFEST
from sidecar.policy.bundle.glob import glob_match
from sidecar.policy.bundle.settings import ALGORITHMS, KeySettings, SigningSettings
from sidecar.policy.errors import PolicyLoadError

__all__ = ["BundleSignatureError", "file_hash", "sign_files", "verify_files"]

_HASHES = {
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}
_MAX_TOKEN = 4 * 1024 * 1024


class BundleSignatureError(PolicyLoadError):
    """The bundle's signature does not verify; the message says which check failed."""


@dataclass(frozen=True)
class _Number:
    """A JSON number as written (Go's ``json.Number``: the digest uses the literal)."""

    text: str


def _structured(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in ("data.json", "data.yaml", "signatures.json") or base == MANIFEST


def file_hash(name: str, content: bytes, algorithm: str = "SHA-256") -> str:
    """The hex digest OPA computes for ``name`` (canonical JSON for structured files)."""
    if algorithm not in _HASHES:
        raise BundleSignatureError(f"{name}: hashing algorithm {algorithm!r} is not accepted")
    digest = hashlib.new(_HASHES[algorithm])
    if _structured(name):
        try:
            value = json.loads(
                content.decode("utf-8"),
                parse_int=_Number,
                parse_float=_Number,
                parse_constant=_refuse_constant,
            )
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise BundleSignatureError(f"{name}: not valid JSON: {exc}") from None
        _walk(value, digest)
    else:
        digest.update(content)
    return digest.hexdigest()


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _walk(value: Any, digest: Any) -> None:
    if isinstance(value, dict):
        digest.update(b"{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-8", "surrogatepass"))):
            if i:
                digest.update(b",")
            digest.update(_go_string(key) + b":")
            _walk(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, list):
        digest.update(b"[")
        for i, item in enumerate(value):
            if i:
                digest.update(b",")
            _walk(item, digest)
        digest.update(b"]")
    elif isinstance(value, _Number):
        digest.update(value.text.encode())
    elif isinstance(value, str):
        digest.update(_go_string(value))
    else:  # True, False, None
        digest.update(json.dumps(value).encode())


def _go_string(text: str) -> bytes:
    """A string as Go's ``encoding/json`` writes it with ``SetEscapeHTML(false)``."""
    out = json.dumps(text, ensure_ascii=False)
    out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return out.encode("utf-8", "replace")


def _b64json(part: str, what: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        return json.loads(raw)
    except (ValueError, json.JSONDecodeError) as exc:
        raise BundleSignatureError(f".signatures.json: the JWT {what} is not JSON: {exc}") from None


def _token(signatures: bytes) -> str:
    if len(signatures) > _MAX_TOKEN:
        raise BundleSignatureError(".signatures.json: too large")
    try:
        doc = json.loads(signatures)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleSignatureError(f".signatures.json: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"signatures", "plugin"}:
        raise BundleSignatureError('.signatures.json: expected {"signatures": [JWT]}')
    if doc.get("plugin"):
        raise BundleSignatureError(".signatures.json: signature plugins are not supported")
    tokens = doc.get("signatures")
    if not isinstance(tokens, list) or len(tokens) != 1 or not isinstance(tokens[0], str):
        raise BundleSignatureError(".signatures.json: expected exactly one JWT")
    return tokens[0]


def _public_key(key_id: str, key: KeySettings) -> Any:
    try:
        pem = key.public_pem()
    except OSError as exc:
        raise BundleSignatureError(f"key {key_id!r}: cannot read key_path: {exc}") from None
    try:
        if b"CERTIFICATE" in pem:
            return load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise BundleSignatureError(f"key {key_id!r}: not a PEM public key: {exc}") from None


def _claims(token: str, signing: SigningSettings, keys: Mapping[str, KeySettings]) -> Any:
    parts = token.split(".")
    if len(parts) != 3:
        raise BundleSignatureError(".signatures.json: the signature is not a compact JWT")
    header = _b64json(parts[0], "header")
    payload = _b64json(parts[1], "payload")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise BundleSignatureError(".signatures.json: the JWT header and payload must be objects")
    key_id = signing.keyid or header.get("kid") or payload.get("keyid") or ""
    if not isinstance(key_id, str) or not key_id:
        raise BundleSignatureError("verification key ID is empty (no keyid configured or in JWT)")
    key = keys.get(key_id)
    if key is None:
        raise BundleSignatureError(f"verification key {key_id!r} is not configured")
    alg = header.get("alg")
    if alg != key.algorithm or alg not in ALGORITHMS:
        raise BundleSignatureError(
            f"JWT algorithm {alg!r} is not the algorithm of key {key_id!r} ({key.algorithm})"
        )
    try:
        claims = jwt.decode(
            token,
            _public_key(key_id, key),
            algorithms=[key.algorithm],
            options={"verify_aud": False, "verify_iss": False},
        )
    except jwt.PyJWTError as exc:
        raise BundleSignatureError(
            f"signature does not verify with key {key_id!r}: {exc}"
        ) from None
    scope = signing.scope or key.scope
    if claims.get("scope", "") != scope:
        raise BundleSignatureError(
            f"scope mismatch: the bundle is signed for {claims.get('scope', '')!r}, "
            f"{scope!r} is expected"
        )
    return claims


def verify_files(
    files: Mapping[str, bytes],
    signatures: bytes | None,
    signing: SigningSettings,
    keys: Mapping[str, KeySettings],
) -> str:
    """Check the bundle's signature and every file against it; returns the key id used.
    Raises :class:`BundleSignatureError` with the reason."""
    if signatures is None:
        raise BundleSignatureError("bundle missing .signatures.json file (it must be signed)")
    claims = _claims(_token(signatures), signing, keys)
    listed = claims.get("files")
    if not isinstance(listed, list):
        raise BundleSignatureError("the JWT has no files claim")
    expected: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BundleSignatureError("the JWT files claim has an entry without a name")
        name = entry["name"].lstrip("/")
        if name in expected:
            raise BundleSignatureError(f"{name}: listed twice in the bundle signature")
        expected[name] = entry
    excluded = signing.exclude_files
    for name in sorted(files):
        if any(glob_match(pattern, name) for pattern in excluded):
            expected.pop(name, None)
            continue
        entry = expected.pop(name, None)
        if entry is None:
            raise BundleSignatureError(f"file {name} not included in bundle signature")
        algorithm = entry.get("algorithm")
        if not isinstance(algorithm, str) or not algorithm:
            raise BundleSignatureError(f"no hashing algorithm provided for file {name}")
        want = entry.get("hash")
        got = file_hash(name, files[name], algorithm)
        if not isinstance(want, str) or want.lower() != got:
            raise BundleSignatureError(f"{name}: digest mismatch (the file was changed)")
    if expected:
        missing = ", ".join(sorted(expected))
        raise BundleSignatureError(
            f"file(s) [{missing}] specified in bundle signatures but not found in the bundle"
        )
    return str(claims.get("keyid") or signing.keyid or "")


def sign_files(
    files: Mapping[str, bytes],
    private_key_pem: bytes,
    algorithm: str,
    *,
    key_id: str = "",
    scope: str = "",
) -> bytes:
    """``.signatures.json`` for ``files``, as ``opa build --signing-key`` writes it."""
    if algorithm not in ALGORITHMS:
        raise BundleSignatureError(f"signing algorithm {algorithm!r} is not one of {ALGORITHMS}")
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleSignatureError(
            f"signing key: not an unencrypted PEM private key: {exc}"
        ) from None
    wanted = rsa.RSAPrivateKey if algorithm[:2] in ("RS", "PS") else ec.EllipticCurvePrivateKey
    if not isinstance(key, wanted):
        kind = "an RSA" if wanted is rsa.RSAPrivateKey else "an EC"
        raise BundleSignatureError(f"signing key: {algorithm} needs {kind} private key")
    payload: dict[str, Any] = {
        "files": [
            {"name": name, "hash": file_hash(name, files[name]), "algorithm": "SHA-256"}
            for name in sorted(files)
        ]
    }
    if key_id:
        payload["keyid"] = key_id
    if scope:
        payload["scope"] = scope
    headers = {"kid": key_id} if key_id else None
    try:
        token = jwt.encode(payload, key, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise BundleSignatureError(f"cannot sign with this key as {algorithm}: {exc}") from None
    return json.dumps({"signatures": [token]}, indent=1).encode()
