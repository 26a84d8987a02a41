"""``agent-sidecar policy build``: a policy directory as an OPA bundle, optionally signed.

The files are the directory's Rego modules (tests left out) and ``data.json`` documents at the
same relative paths, byte for byte; the ``.manifest`` carries the directory's revision (as
``load_policy_dir`` computes it, so CRLF files give the same one) or the one given, and
``rego_version: 1``. Signing writes ``.signatures.json`` as ``opa build --signing-key`` does
(``signing.py``). The built bundle is then read back and verified as the sidecar will (roots,
format, signature), so ``policy build`` never writes a bundle the fleet refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from sidecar.policy.bundle.archive import MANIFEST, SIGNATURES, read_bundle, write_bundle
from sidecar.policy.bundle.settings import KeySettings, SigningSettings
from sidecar.policy.bundle.signing import sign_files, verify_files
from sidecar.policy.source import load_policy_dir

__all__ = ["build_bundle", "bundle_files"]

_NO_LIMIT = 1 << 40  # the built bundle is read back whole: its size is not in question


def bundle_files(
    policy_dir: Path, *, revision: str = "", roots: tuple[str, ...] = ()
) -> dict[str, bytes]:
    """The files of the bundle for ``policy_dir`` (``.manifest`` included, unsigned)."""
    source = load_policy_dir(policy_dir)  # refuses what the sidecar would refuse to load
    root = Path(policy_dir)
    files: dict[str, bytes] = {}
    for module in source.modules:
        path = Path(module.path)
        files[path.relative_to(root).as_posix()] = path.read_bytes()
    for path in sorted(root.rglob("data.json")):
        rel = path.relative_to(root)
        if path.is_file() and not ({".git", "__pycache__", "schemas"} & set(rel.parts[:-1])):
            files[rel.as_posix()] = path.read_bytes()
    manifest: dict[str, object] = {
        "revision": revision or source.revision,
        "rego_version": 1,
    }
    if roots:
        manifest["roots"] = list(roots)
    files[MANIFEST] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return files


def build_bundle(
    policy_dir: Path,
    *,
    revision: str = "",
    roots: tuple[str, ...] = (),
    signing_key: bytes | None = None,
    algorithm: str = "RS256",
    key_id: str = "",
    scope: str = "",
) -> bytes:
    """The ``.tar.gz`` bundle for ``policy_dir``; signed when ``signing_key`` (PEM) is given."""
    files = bundle_files(policy_dir, revision=revision, roots=roots)
    if signing_key is None:
        blob = write_bundle(files)
        read_bundle(blob, size_limit=_NO_LIMIT)
        return blob
    signatures = sign_files(files, signing_key, algorithm, key_id=key_id, scope=scope)
    blob = write_bundle({**files, SIGNATURES: signatures})
    bundle = read_bundle(blob, size_limit=_NO_LIMIT)
    public = (
        serialization.load_pem_private_key(signing_key, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kid = key_id or "signing-key"
    keys = {kid: KeySettings(algorithm=algorithm, key=public.decode(), scope=scope)}
    verify_files(bundle.files, bundle.signatures, SigningSettings(keyid=kid, scope=scope), keys)
    return blob
