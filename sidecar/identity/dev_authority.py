"""A development-only SPIFFE authority: an X.509 CA and a JWT signing key for one trust domain.

It issues X.509-SVIDs (EC P-256 leaf with the SPIFFE ID as its only URI SAN, as the X509-SVID
standard requires) and JWT-SVIDs (ES256, ``kid`` and ``typ: JWT`` in the header, ``sub``,
``aud``, ``exp``, ``iat`` claims), and publishes the matching bundles. ``rotate`` replaces the
JWT key (keeping the previous one in the bundle, so tokens in flight stay valid) and makes
every later X.509-SVID use a new leaf key.

It exists so that the identity path can be run and tested for real where no SPIRE server can
be had. It is not a production CA: keys live in memory, there is no attestation.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevAuthority", "IssuedX509Svid"]


@dataclass(frozen=True)
class IssuedX509Svid:
    spiffe_id: str
    chain_der: bytes  # leaf first
    key_der: bytes  # PKCS#8
    leaf: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def chain_pem(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _b64url_uint(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


class DevAuthority:
    """CA + JWT key for ``trust_domain``. Thread-safe."""

    def __init__(
        self,
        trust_domain: str,
        *,
        x509_ttl_s: float = 3600,
        jwt_ttl_s: float = 300,
    ) -> None:
        self.trust_domain = trust_domain
        self.x509_ttl_s = x509_ttl_s
        self.jwt_ttl_s = jwt_ttl_s
        self._lock = threading.Lock()
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agent-sidecar development CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, trust_domain),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            # Real CAs carry key identifiers; Python 3.13's verification requires them.
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self._jwt_keys: list[tuple[str, ec.EllipticCurvePrivateKey]] = []
        self._new_jwt_key()
        self.generation = 0

    def _new_jwt_key(self) -> None:
        kid = secrets.token_hex(8)
        self._jwt_keys.append((kid, ec.generate_private_key(ec.SECP256R1())))
        self._jwt_keys = self._jwt_keys[-2:]  # current and previous

    # --- X.509 ----------------------------------------------------------------------------

    def issue_x509(
        self,
        spiffe_id: str,
        *,
        ttl_s: float | None = None,
        not_before: dt.datetime | None = None,
        dns_names: Sequence[str] = (),
    ) -> IssuedX509Svid:
        """An X.509-SVID: exactly one URI SAN (the SPIFFE ID), optionally DNS SANs too (the
        standard allows them; gRPC clients verify an mTLS server by a DNS name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
        lifetime = dt.timedelta(seconds=self.x509_ttl_s if ttl_s is None else ttl_s)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(seconds=30) + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, True, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_id),
                        *(x509.DNSName(name) for name in dns_names),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        key_der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedX509Svid(
            spiffe_id, leaf.public_bytes(serialization.Encoding.DER), key_der, leaf, key
        )

    @property
    def x509_bundle_der(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.DER)

    @property
    def x509_bundle_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    # --- JWT ------------------------------------------------------------------------------

    def issue_jwt(
        self,
        spiffe_id: str,
        audience: Sequence[str],
        *,
        ttl_s: float | None = None,
        extra_claims: dict[str, object] | None = None,
        headers: dict[str, object] | None = None,
    ) -> str:
        now = int(time.time())
        with self._lock:
            kid, key = self._jwt_keys[-1]
        claims: dict[str, object] = {
            "sub": spiffe_id,
            "aud": list(audience),
            "iat": now,
            "exp": now + int(self.jwt_ttl_s if ttl_s is None else ttl_s),
        }
        claims.update(extra_claims or {})
        return jwt.encode(
            claims, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT", **(headers or {})}
        )

    def jwt_signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The current (kid, key): for tests that forge tokens with a known key."""
        with self._lock:
            return self._jwt_keys[-1]

    @property
    def jwt_bundle_json(self) -> bytes:
        with self._lock:
            keys = list(self._jwt_keys)
        jwks = []
        for kid, key in keys:
            numbers = key.public_key().public_numbers()
            jwks.append(
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": _b64url_uint(numbers.x, 32),
                    "y": _b64url_uint(numbers.y, 32),
                    "kid": kid,
                    "use": "jwt-svid",
                }
            )
        return json.dumps({"keys": jwks}).encode()

    def rotate(self) -> None:
        """New JWT key (the previous stays in the bundle); later X.509-SVIDs get new keys."""
        with self._lock:
            self._new_jwt_key()
            self.generation += 1
