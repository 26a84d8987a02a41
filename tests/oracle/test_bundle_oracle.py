"""Issue 27, deliverable 2: a bundle written by ``policy build`` is one OPA's own Go engine
(the oracle) loads and decides with exactly as the embedded engine decides when it serves the
same bundle; and OPA's own built-ins check the signature the sidecar wrote (the JWT verifies
with ``io.jwt.verify_rs256`` / ``verify_es256`` and every listed digest is the ``crypto.sha256``
of the file, JSON files in OPA's canonical form)."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from typing import Any

import pytest

from sidecar.policy import DecisionError
from sidecar.policy.bundle.archive import read_bundle
from sidecar.policy.bundle.build import build_bundle
from sidecar.policy.bundle.engine import BundleEngine
from sidecar.policy.source import load_policy_dir
from tests.conftest import REGO
from tests.oracle import corpus
from tests.oracle.conftest import Opa, OpaError
from tests.oracle.test_differential import QUERY, _enforced
from tests.support.bundles import KeyPair


def _untar(blob: bytes) -> dict[str, bytes]:
    """The tarball as OPA's tarball loader sees it (regular files; the leading ``/`` off)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {
            m.name.lstrip("/"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isreg()
        }


def _opa_from_bundle(files: dict[str, bytes]) -> Opa:
    """Load the bundle's files into OPA as OPA's bundle reader does: every ``*.rego`` is a
    module; each ``data.json`` is mounted at its directory (``mktree``) and deep-merged."""
    opa = Opa(
        [(name, files[name].decode()) for name in sorted(files) if name.endswith(".rego")], {}
    )
    for name in sorted(files):
        if name == "data.json" or name.endswith("/data.json"):
            doc: Any = json.loads(files[name])
            for part in reversed(name.split("/")[:-1]):
                doc = {part: doc}
            opa._engine.add_data(doc)
    return opa


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_item2_opa_verifies_the_signature_policy_build_wrote(opa_available, alg):
    key = KeyPair("rsa" if alg == "RS256" else "ec")
    files = _untar(
        build_bundle(REGO, revision="r1", signing_key=key.private_pem, algorithm=alg, key_id="k1")
    )
    token = json.loads(files.pop(".signatures.json"))["signatures"][0]
    opa = Opa([], {})
    try:
        verify = f"io.jwt.verify_{alg.lower()}"
        assert opa.query(f"{verify}({json.dumps(token)}, {json.dumps(key.public_pem)})") == (
            True,
            True,
        )
        _, decoded = opa.query(f"io.jwt.decode({json.dumps(token)})")
        header, payload, _ = decoded
        assert header["alg"] == alg and header["kid"] == "k1" and payload["keyid"] == "k1"
        listed = {f["name"]: f for f in payload["files"]}
        assert set(listed) == set(files)  # every file, and only the files, are signed
        for name, content in files.items():
            assert listed[name]["algorithm"] == "SHA-256"
            if name.endswith(".rego"):
                expression = f"crypto.sha256({json.dumps(content.decode())})"
            else:  # OPA's canonical JSON: sorted keys, no whitespace (json.marshal)
                expression = f"crypto.sha256(json.marshal({content.decode()}))"
            assert opa.query(expression) == (True, listed[name]["hash"]), name
    finally:
        opa.close()


def test_item2_opa_decides_a_built_bundle_as_the_embedded_engine(opa_available, capsys):
    blob = build_bundle(REGO)
    files = _untar(blob)
    assert json.loads(files[".manifest"]) == {
        "revision": load_policy_dir(REGO).revision,
        "rego_version": 1,
    }
    bundle = read_bundle(blob, size_limit=1 << 26)
    engine = BundleEngine(QUERY, workers=1)
    engine.activate(bundle.source("authz"))
    opa = _opa_from_bundle(files)
    data = load_policy_dir(REGO).data["agentsidecar"]
    compared = 0
    differences = []
    try:
        for doc in itertools.islice(corpus.generate(data, random_cases=300), 1500):
            try:
                want = _enforced(*opa.query(QUERY, doc))
            except OpaError as exc:
                want = f"deny:engine_error ({exc.code})"
            try:
                result = engine.evaluate_sync(doc)
                got = _enforced(result.defined, result.value)
            except DecisionError as exc:
                got = f"deny:{exc.code}"
            if got == "deny:input_unrepresentable":
                continue  # refused before policy: the differential run bounds these
            compared += 1
            if got != want:
                differences.append((doc, want, got))
    finally:
        engine.close()
        opa.close()
    with capsys.disabled():
        print(f"\nbundle oracle: {compared} inputs compared, {len(differences)} differing")
    assert compared >= 1000
    assert differences == [], differences[:3]
