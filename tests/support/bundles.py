"""Bundle test helpers: real keys, a small policy with a marker, bundle settings as parsed from
configuration (``policy.bundle``), and a runtime wired to a real embedded engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.policy.bundle.engine import BundleEngine
from sidecar.policy.bundle.runtime import BundleRuntime
from sidecar.policy.bundle.settings import BundleSettings
from sidecar.typed_config import convert

QUERY = "data.agentsidecar.authz.decision"
MARKED = """package agentsidecar.authz

import rego.v1

decision := {{"effect": "allow", "reasons": ["{marker}"]}}
"""


class KeyPair:
    """A real key pair: the private key PEM (for signing) and the public key PEM."""

    def __init__(self, kind: str = "rsa") -> None:
        if kind == "rsa":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


def marked_policy(root: Path, marker: str) -> Path:
    target = root / "agentsidecar" / "authz" / "authz.rego"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(MARKED.format(marker=marker))
    (root / "agentsidecar" / "data.json").write_text('{"limits": {"max": 3}}')
    return root


def bundle_config(
    url: str, tmp_path: Path, *, signing: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A ``policy.bundle`` section (as in a config file) for the bundle ``authz``."""
    source: dict[str, Any] = {
        "service": "acme",
        "resource": "bundles/authz.tar.gz",
        "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2},
    }
    source.update(extra.pop("source", {}))
    if signing is not None:
        source["signing"] = signing
    raw: dict[str, Any] = {
        "services": {"acme": {"url": url, **extra.pop("service", {})}},
        "bundles": {"authz": source},
        "persistence_directory": str(tmp_path / "persist"),
    }
    raw.update(extra)
    return raw


def parse_bundle_settings(raw: dict[str, Any], base: Path) -> BundleSettings:
    return convert(BundleSettings, raw, "policy.bundle", base)


def runtime(settings: BundleSettings, **engine_options: Any) -> BundleRuntime:
    engine = BundleEngine(QUERY, workers=1, **engine_options)
    return BundleRuntime(settings, engine)
