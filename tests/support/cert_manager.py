"""cert-manager's issuance, as far as the webhook's manifests use it, with real certificates.

Given the rendered Issuers and Certificates, :class:`CertManager` issues each Certificate the
way cert-manager's controllers do: a ``selfSigned`` Issuer signs with the Certificate's own
key, a ``ca`` Issuer with the key in its Secret; ``privateKey`` picks the algorithm and
whether a renewal keeps the key (``rotationPolicy: Never``) or makes a new one (``Always``);
``isCA``, ``commonName``, ``dnsNames``, ``usages``, ``duration`` and ``renewBefore`` shape
the certificate. The Secret's ``ca.crt`` is what cainjector copies into a webhook's
``caBundle`` (``cert-manager.io/inject-ca-from: NAMESPACE/CERTIFICATE``): the issuing CA for a
``ca`` Issuer, the certificate itself when self-signed.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertManager", "IssuanceError", "Secret", "go_duration"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_CURVES = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
_EKU = {
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
}


class IssuanceError(ValueError):
    """cert-manager would not issue this (a missing Issuer or CA Secret, an unknown field)."""


@dataclass(frozen=True)
class Secret:
    """A Certificate's Secret: ``tls.crt``, ``tls.key`` and ``ca.crt``."""

    cert: x509.Certificate
    key: PrivateKey
    ca: x509.Certificate

    @property
    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.PEM)


def go_duration(text: str) -> dt.timedelta:
    """A Go duration as cert-manager's ``duration`` and ``renewBefore`` take it (h, m, s)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text or "")
    if not text or parts is None:
        raise IssuanceError(f"not a duration: {text!r}")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return dt.timedelta(hours=hours, minutes=minutes, seconds=seconds)


class CertManager:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
        self.certificates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
        self.secrets: dict[str, Secret] = {}

    def issue(self, name: str, at: dt.datetime) -> Secret:
        """Issue (or renew) the Certificate ``name`` at time ``at``; returns its new Secret."""
        spec = self.certificates[name]["spec"]
        ref = spec["issuerRef"]
        if ref.get("kind", "Issuer") != "Issuer" or ref.get("group", "cert-manager.io") != (
            "cert-manager.io"
        ):
            raise IssuanceError(f"{name}: issuerRef must be a cert-manager.io Issuer")
        issuer = self.issuers.get(ref["name"])
        if issuer is None:
            raise IssuanceError(f"{name}: no Issuer {ref['name']}")
        key = self._key(spec)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])]
            if spec.get("commonName")
            else []
        )
        if "selfSigned" in issuer["spec"]:
            signer, issuer_name, ca = key, subject, None
        elif "ca" in issuer["spec"]:
            backing = self.secrets.get(issuer["spec"]["ca"]["secretName"])
            if backing is None:
                raise IssuanceError(f"{name}: Issuer {ref['name']}'s CA Secret does not exist yet")
            signer, issuer_name, ca = backing.key, backing.cert.subject, backing.cert
        else:
            raise IssuanceError(f"{name}: Issuer {ref['name']} is neither selfSigned nor ca")
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at)
            .not_valid_after(at + go_duration(spec.get("duration", "2160h")))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if ca is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), False
            )
        if spec.get(
            "dnsNames"
        ):  # critical when the subject is empty (RFC 5280; so does cert-manager)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in spec["dnsNames"]]),
                critical=not spec.get("commonName"),
            )
        builder = self._usages(builder, spec)
        cert = builder.sign(signer, hashes.SHA256())
        secret = Secret(cert=cert, key=key, ca=ca if ca is not None else cert)
        self.secrets[spec["secretName"]] = secret
        return secret

    def renewal_time(self, name: str) -> dt.datetime:
        """When cert-manager renews the Certificate ``name``: ``renewBefore`` its expiry."""
        spec = self.certificates[name]["spec"]
        issued = self.secrets[spec["secretName"]].cert
        return issued.not_valid_after_utc - go_duration(spec.get("renewBefore", "720h"))

    def ca_bundle(self, annotated: dict[str, Any], namespace: str) -> bytes:
        """What cainjector puts in the ``caBundle`` of ``annotated`` (a webhook configuration)."""
        source = annotated["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        source_namespace, _, name = source.partition("/")
        if source_namespace != namespace or name not in self.certificates:
            raise IssuanceError(f"inject-ca-from {source!r}: no such Certificate in {namespace}")
        return self.secrets[self.certificates[name]["spec"]["secretName"]].ca_pem

    def _key(self, spec: dict[str, Any]) -> PrivateKey:
        options = spec.get("privateKey") or {}
        existing = self.secrets.get(spec["secretName"])
        # cert-manager >= 1.18 defaults to Always; the manifests say which they mean.
        if existing is not None and options.get("rotationPolicy", "Always") == "Never":
            return existing.key
        algorithm = options.get("algorithm", "RSA")
        if algorithm == "ECDSA":
            return ec.generate_private_key(_CURVES[int(options.get("size", 256))])
        if algorithm == "RSA":
            return rsa.generate_private_key(65537, int(options.get("size", 2048)))
        raise IssuanceError(f"privateKey.algorithm {algorithm!r} is not emulated here")

    @staticmethod
    def _usages(builder: x509.CertificateBuilder, spec: dict[str, Any]) -> x509.CertificateBuilder:
        usages = set(spec.get("usages") or ["digital signature", "key encipherment"])
        is_ca = bool(spec.get("isCA"))
        builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature="digital signature" in usages,
                content_commitment=False,
                key_encipherment="key encipherment" in usages,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        extended = [_EKU[u] for u in sorted(usages) if u in _EKU]
        if extended:
            builder = builder.add_extension(x509.ExtendedKeyUsage(extended), False)
        return builder
