"""The custom-resource schemas are ours, and they refuse what the API server and the
operators' webhooks would.

The finding: three upstream CustomResourceDefinitions (cert-manager's Certificate and Issuer,
SPIRE's ClusterSPIFFEID; 390 KB) had been copied verbatim into tests/k8s/testdata/crds. They
are replaced by compact schemas we wrote from the documented APIs (tests/support/crds.py loads
them). These tests hold the replacement to that: only our files, each saying so; every kind our
manifests use covered; every object closed; the rules that matter refused with a clear error;
a malformed schema file failing loudly instead of validating nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import crds
from tests.support.kustomize import HAVE_KUBECTL, build, find

needs_kubectl = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")

FREE_MAPS = {"matchLabels", "labels", "annotations"}  # label-style maps: any key, string values
SCHEMA_FILES = sorted(crds.CRD_DIR.glob("*.schema.yaml"))
USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
]  # fmt: skip


def refused(doc: Any, match: str) -> None:
    with pytest.raises(crds.CrdValidationError, match=match):
        crds.validate(doc)


def custom_resources(overlay: str) -> list[dict[str, Any]]:
    """The overlay's cert-manager and SPIRE objects."""
    groups = {"cert-manager.io", "spire.spiffe.io"}
    return [d for d in build(overlay) if d["apiVersion"].split("/")[0] in groups]


def objects_in(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every mapping inside ``value`` (``value`` itself included)."""
    if isinstance(value, dict):
        yield path
        for k, v in value.items():
            yield from objects_in(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from objects_in(v, (*path, i))


def test_own_crd_schemas_only_our_files_remain_each_saying_what_it_is():
    names = sorted(p.name for p in crds.CRD_DIR.iterdir())
    assert names == [
        "README.md",
        "certificate.schema.yaml",
        "clusterspiffeid.schema.yaml",
        "issuer.schema.yaml",
    ]
    total = 0
    for path in SCHEMA_FILES:
        text = path.read_text(encoding="utf-8")
        total += len(text.encode())
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert text.startswith("# Ours (agent-sidecar)"), path.name
        assert "not copied" in header and "kubectl apply" in header, path.name
        assert "CustomResourceDefinition" not in text, path.name
    assert total < 16_000, "compact: the fields that matter, not a generated CRD"
    readme = (crds.CRD_DIR / "README.md").read_text(encoding="utf-8")
    assert "copied unchanged" not in readme.lower()


def test_own_crd_schemas_cover_the_kinds_our_manifests_use_and_no_others():
    for api_version, kind in [
        ("cert-manager.io/v1", "Certificate"),
        ("cert-manager.io/v1", "Issuer"),
        ("cert-manager.io/v1", "ClusterIssuer"),
        ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"),
    ]:
        assert crds.known({"apiVersion": api_version, "kind": kind}), kind
    for api_version, kind in [
        ("cert-manager.io/v1", "CertificateRequest"),
        ("cert-manager.io/v1alpha2", "Certificate"),  # a version long gone
        ("spire.spiffe.io/v1alpha1", "ClusterStaticEntry"),
        ("", ""),
    ]:
        assert not crds.known({"apiVersion": api_version, "kind": kind}), kind
        refused({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, "no schema")


@needs_kubectl
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_own_crd_schemas_refuse_an_unknown_field_in_every_object_of_our_manifests(overlay):
    """Strict field validation everywhere: a stray field in any mapping of any custom resource
    we ship is refused (metadata aside, the API server's to check; and maps whose keys are
    free, such as matchLabels)."""
    docs = custom_resources(overlay)
    assert len(docs) == 5
    tried = 0
    for doc in docs:
        crds.validate(doc)
        for path in objects_in(doc):
            if (path and path[0] == "metadata") or (path and path[-1] in FREE_MAPS):
                continue
            hostile = copy.deepcopy(doc)
            target = hostile
            for step in path:
                target = target[step]
            target["notAField"] = "x"
            refused(hostile, "notAField")
            tried += 1
    assert tried >= 15  # root, spec, issuerRef, privateKey, selectors, ... of 5 objects


@needs_kubectl
def test_own_crd_schemas_a_certificate_is_typed_with_cert_managers_enums():
    leaf = find(build("prod"), "Certificate", "agent-sidecar-webhook")
    spec = leaf["spec"]

    def with_spec(**fields: Any) -> dict[str, Any]:
        return {**leaf, "spec": {**spec, **fields}}

    crds.validate(with_spec(usages=USAGES))  # every key usage cert-manager knows
    for good in ("1h", "1h30m", "90m", "1.5h", "3600s"):
        crds.validate(with_spec(duration=good, renewBefore=good))
    crds.validate(with_spec(privateKey={"algorithm": "Ed25519", "encoding": "PKCS8"}))
    crds.validate(with_spec(secretTemplate={"labels": {"a": "b"}}, revisionHistoryLimit=1))
    refused(with_spec(usages=["server auth", "serverAuth"]), "serverAuth")
    refused(with_spec(usages="server auth"), "usages")
    for bad in ("90d", "1 h", "-1h", "", "h"):
        refused(with_spec(duration=bad), "duration")
    refused(with_spec(privateKey={"algorithm": "DSA"}), "DSA")
    refused(with_spec(privateKey={"encoding": "PEM"}), "PEM")
    refused(with_spec(privateKey={"size": "256"}), "size")
    refused(with_spec(commonName="x" * 65), "commonName")  # X.509's bound for a CN
    refused(with_spec(dnsNames="agent-sidecar-webhook"), "dnsNames")
    refused(with_spec(dnsNames=[1]), "dnsNames")
    refused(with_spec(revisionHistoryLimit=0), "revisionHistoryLimit")
    refused(with_spec(secretTemplate={"labels": {"a": 1}}), "secretTemplate/labels/a")
    refused(with_spec(issuerRef={"kind": "Issuer"}), "name")
    refused({**leaf, "spec": {k: v for k, v in spec.items() if k != "secretName"}}, "secretName")
    refused({**leaf, "spec": None}, "spec")
    refused({k: v for k, v in leaf.items() if k != "spec"}, "spec")


@needs_kubectl
def test_own_crd_schemas_an_issuer_is_exactly_one_type():
    docs = build("prod")
    ca = find(docs, "Issuer", "agent-sidecar-ca")
    exactly_one = "exactly one issuer type"
    refused({**ca, "spec": {**ca["spec"], "selfSigned": {}}}, exactly_one)  # two types
    refused({**ca, "spec": {}}, exactly_one)  # none
    refused({**ca, "spec": {"ca": {}}}, "secretName")
    refused({**ca, "spec": {"ca": {"secretName": 7}}}, "secretName")
    refused({**ca, "spec": {"selfSigned": {"crlDistributionPoint": []}}}, "crlDistributionPoint")
    refused({**ca, "spec": {"acme": {"server": "https://acme.example"}}}, "privateKeySecretRef")
    refused({**ca, "spec": {"vault": "https://vault.example"}}, "vault")
    refused({**ca, "spec": {"selfsigned": {}}}, "selfsigned")  # a casing slip is not a type
    for spec in (
        {"selfSigned": {"crlDistributionPoints": ["http://crl.example/ca.crl"]}},
        {"ca": {"secretName": "s", "ocspServers": ["http://ocsp.example"]}},
        {"acme": {"server": "https://acme.example", "privateKeySecretRef": {"name": "k"}}},
        {"vault": {"server": "https://vault.example", "path": "pki/sign/x", "auth": {}}},
        {"venafi": {"zone": "z", "cloud": {}}},
    ):
        crds.validate({**ca, "spec": spec})
        crds.validate({**ca, "kind": "ClusterIssuer", "spec": spec})
    refused({**ca, "kind": "ClusterIssuer", "spec": {}}, exactly_one)


@needs_kubectl
def test_own_crd_schemas_a_clusterspiffeid_label_selector_follows_kubernetes_rules():
    obj = find(build("prod"), "ClusterSPIFFEID", "agent-sidecar-agents")

    def expression(**fields: Any) -> dict[str, Any]:
        hostile = copy.deepcopy(obj)
        hostile["spec"]["namespaceSelector"] = {"matchExpressions": [{"key": "k", **fields}]}
        return hostile

    for good in (
        {"operator": "In", "values": ["a"]},
        {"operator": "NotIn", "values": ["a", "b"]},
        {"operator": "Exists"},
        {"operator": "DoesNotExist", "values": []},
    ):
        crds.validate(expression(**good))
    refused(expression(operator="in", values=["a"]), "operator: 'in' is not one of")
    refused(expression(operator="NotIn"), "In or NotIn needs at least one value")
    refused(expression(operator="In", values=[]), "In or NotIn needs at least one value")
    refused(expression(operator="Exists", values=["a"]), "Exists or DoesNotExist takes no values")
    refused(expression(values=["a"]), "operator")
    refused(expression(operator="In", values="a"), "values")
    hostile = copy.deepcopy(obj)
    hostile["spec"]["podSelector"] = {"matchLabel": {"a": "b"}}  # a one-letter slip
    refused(hostile, "matchLabel")
    hostile["spec"]["podSelector"] = {"matchLabels": {"a": True}}
    refused(hostile, "matchLabels/a")
    for field, bad in (
        ("spiffeIDTemplate", ""),
        ("ttl", "1d"),
        ("jwtTtl", 300),
        ("admin", "true"),
        ("federatesWith", "example.com"),
        ("autoPopulateDNSNames", 1),
        ("fallback", None),
    ):
        refused({**obj, "spec": {**obj["spec"], field: bad}}, field)
    refused(
        {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "spiffeIDTemplate"}},
        "spiffeIDTemplate",
    )
    crds.validate(
        {
            **obj,
            "spec": {
                **obj["spec"],
                "ttl": "1h",
                "jwtTtl": "5m",
                "hint": "agents",
                "workloadSelectorTemplates": ["k8s:sa:{{ .PodSpec.ServiceAccountName }}"],
                "federatesWith": ["partner.example"],
                "admin": False,
                "downstream": False,
                "autoPopulateDNSNames": True,
                "fallback": False,
            },
        }
    )


@pytest.mark.parametrize(
    "doc",
    [
        "Certificate",
        ["cert-manager.io/v1", "Certificate"],
        None,
        {"apiVersion": ["cert-manager.io/v1"], "kind": "Certificate"},
        {"apiVersion": "cert-manager.io/v1", "kind": {"name": "Certificate"}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": "leaf"},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": ""}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": 3}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x"}},
    ],
)
def test_own_crd_schemas_hostile_documents_are_refused_with_a_clear_error(doc):
    with pytest.raises(crds.CrdValidationError):
        crds.validate(doc)


def test_own_crd_schemas_an_oversized_document_is_validated_not_waved_through():
    spec = {
        "secretName": "s",
        "issuerRef": {"name": "ca"},
        "dnsNames": [f"n{i}.example" for i in range(20_000)],
    }
    doc = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "big"},
        "spec": spec,
    }
    crds.validate(doc)
    spec["dnsNames"][-1] = 0
    refused(doc, "dnsNames/19999")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: [unclosed", "not YAML"),
        ("- a list\n", "needs apiVersion, kinds and schema"),
        ("apiVersion: g/v1\nkinds: [K]\n", "needs apiVersion, kinds and schema"),
        ("apiVersion: g/v1\nkinds: [K]\nschema: {type: object}\nextra: 1\n", "unknown keys"),
        ("apiVersion: v1\nkinds: [K]\nschema: {type: object}\n", "GROUP/VERSION"),
        ("apiVersion: g/v1\nkinds: []\nschema: {type: object}\n", "kinds"),
        ("apiVersion: g/v1\nkinds: K\nschema: {type: object}\n", "kinds"),
        ("apiVersion: g/v1\nkinds: [K]\nschema: {type: string}\n", "object schema"),
        ("apiVersion: g/v1\nkinds: [K]\nschema: {type: object, required: 3}\n", "valid schema"),
    ],
)
def test_own_crd_schemas_a_malformed_schema_file_fails_loudly(tmp_path: Path, text, match):
    path = tmp_path / "broken.schema.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(crds.SchemaFileError, match=match):
        crds._load(path)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"vendored.yaml": "kind: CustomResourceDefinition\n"}, r"only \*\.schema\.yaml"),
        (
            {
                f"{n}.schema.yaml": "apiVersion: g/v1\nkinds: [K]\nschema: {type: object}\n"
                for n in ("a", "b")
            },
            "g/v1 K twice",
        ),
    ],
)
def test_own_crd_schemas_a_copied_crd_or_a_duplicate_kind_in_the_directory_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files, match
):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    monkeypatch.setattr(crds, "CRD_DIR", tmp_path)
    crds._schemas.cache_clear()
    try:
        with pytest.raises(crds.SchemaFileError, match=match):
            crds.known({"apiVersion": "g/v1", "kind": "K"})
    finally:
        monkeypatch.undo()
        crds._schemas.cache_clear()
