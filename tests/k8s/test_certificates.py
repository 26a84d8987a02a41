"""Issue 31 item 3: the webhook's certificate renews without changing the ``caBundle``.

The rendered Issuers and Certificates are validated against our schemas of cert-manager's API, then
issued for real as cert-manager would (tests/support/cert_manager.py): the CA, the leaf, the
leaf renewed twice (a new key each time), and the CA renewed. Every serving certificate must
verify, for each of the Service's DNS names, against the ``caBundle`` cainjector put in the
MutatingWebhookConfiguration at the start, byte for byte unchanged: that is what the API
server checks before it calls the webhook, and with ``failurePolicy: Fail`` a leaf that does
not verify means no agent pod is created.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from tests.support import crds
from tests.support.cert_manager import CertManager, IssuanceError, go_duration
from tests.support.kustomize import HAVE_KUBECTL, build, find

pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")

NAMESPACE = "agent-sidecar-system"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def verify(leaf: x509.Certificate, bundle: bytes, name: str, at: dt.datetime) -> None:
    """Verify ``leaf`` for ``name`` against ``bundle`` as a TLS client does (raises if not)."""
    store = Store(x509.load_pem_x509_certificates(bundle))
    verifier = PolicyBuilder().store(store).time(at).build_server_verifier(DNSName(name))
    verifier.verify(leaf, [])


def webhook_chain(docs: list[dict]) -> tuple[CertManager, str, str]:
    """The leaf Certificate the webhook Deployment serves, and the CA Certificate behind it."""
    manager = CertManager(docs)
    deployment = find(docs, "Deployment", "agent-sidecar-webhook")
    secrets = {
        v["secret"]["secretName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    [leaf] = [n for n, c in manager.certificates.items() if c["spec"]["secretName"] in secrets]
    issuer = manager.issuers[manager.certificates[leaf]["spec"]["issuerRef"]["name"]]
    [ca] = [
        n
        for n, c in manager.certificates.items()
        if c["spec"]["secretName"] == (issuer["spec"].get("ca") or {}).get("secretName")
    ] or [leaf]
    return manager, ca, leaf


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_item3_the_cert_manager_objects_validate_against_cert_managers_crds(overlay):
    docs = build(overlay)
    ours = [d for d in docs if d["apiVersion"] == "cert-manager.io/v1"]
    assert {(d["kind"], d["metadata"]["name"]) for d in ours} == {
        ("Issuer", "agent-sidecar-selfsigned"),
        ("Certificate", "agent-sidecar-webhook-ca"),
        ("Issuer", "agent-sidecar-ca"),
        ("Certificate", "agent-sidecar-webhook"),
    }
    for doc in ours:
        assert doc["metadata"]["namespace"] == NAMESPACE
        crds.validate(doc)


def test_item3_the_crd_check_refuses_what_cert_manager_would():
    """The schema check has teeth: a misplaced field, a bad enum, a wrong type."""
    leaf = find(build("prod"), "Certificate", "agent-sidecar-webhook")
    misplaced = {**leaf, "spec": {**leaf["spec"], "rotationPolicy": "Always"}}
    bad_enum = {**leaf, "spec": {**leaf["spec"], "privateKey": {"rotationPolicy": "Sometimes"}}}
    wrong_type = {**leaf, "spec": {**leaf["spec"], "isCA": "yes"}}
    for doc, field in [
        (misplaced, "rotationPolicy"),
        (bad_enum, "Sometimes"),
        (wrong_type, "isCA"),
    ]:
        with pytest.raises(crds.CrdValidationError, match=field):
            crds.validate(doc)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_item3_leaf_renewals_keep_the_ca_bundle_and_verify_against_it(overlay):
    docs = build(overlay)
    manager, ca_name, leaf_name = webhook_chain(docs)
    assert ca_name != leaf_name, "the webhook's leaf must be issued by a CA Issuer"
    ca_spec = manager.certificates[ca_name]["spec"]
    assert ca_spec["isCA"] is True and ca_spec["privateKey"]["rotationPolicy"] == "Never"
    assert go_duration(ca_spec["duration"]) >= 10 * go_duration(
        manager.certificates[leaf_name]["spec"]["duration"]
    )
    webhook = find(docs, "MutatingWebhookConfiguration", "agent-sidecar")
    dns_names = manager.certificates[leaf_name]["spec"]["dnsNames"]
    service = find(docs, "Service", "agent-sidecar-webhook")
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in dns_names

    manager.issue(ca_name, START)
    first = manager.issue(leaf_name, START)
    bundle = manager.ca_bundle(webhook, NAMESPACE)
    for name in dns_names:
        verify(first.cert, bundle, name, START)

    leaves = [first]
    for _ in range(2):  # renewed twice, each time renewBefore its expiry
        at = manager.renewal_time(leaf_name)
        renewed = manager.issue(leaf_name, at)
        assert manager.ca_bundle(webhook, NAMESPACE) == bundle  # caBundle unchanged
        for name in dns_names:
            verify(renewed.cert, bundle, name, at)
        leaves.append(renewed)
    keys = {leaf.cert.public_key().public_numbers() for leaf in leaves}
    assert len(keys) == 3, "rotationPolicy Always: every renewal has a new key"
    # The expiry is real: the first leaf, past its notAfter, no longer verifies.
    with pytest.raises(VerificationError):
        verify(
            leaves[0].cert,
            bundle,
            dns_names[0],
            leaves[0].cert.not_valid_after_utc + dt.timedelta(seconds=1),
        )


def test_item3_the_ca_renewal_keeps_its_key_so_earlier_leaves_still_verify():
    docs = build("prod")
    manager, ca_name, leaf_name = webhook_chain(docs)
    webhook = find(docs, "MutatingWebhookConfiguration", "agent-sidecar")
    ca = manager.issue(ca_name, START)
    at = manager.renewal_time(ca_name)
    leaf = manager.issue(leaf_name, at - dt.timedelta(days=1))
    renewed_ca = manager.issue(ca_name, at)
    assert renewed_ca.cert.serial_number != ca.cert.serial_number
    assert renewed_ca.key is ca.key  # rotationPolicy Never
    new_bundle = manager.ca_bundle(webhook, NAMESPACE)
    name = manager.certificates[leaf_name]["spec"]["dnsNames"][0]
    verify(leaf.cert, new_bundle, name, at)


def test_item3_hostile_a_foreign_or_misnamed_leaf_is_refused():
    docs = build("prod")
    manager, ca_name, leaf_name = webhook_chain(docs)
    webhook = find(docs, "MutatingWebhookConfiguration", "agent-sidecar")
    manager.issue(ca_name, START)
    bundle = manager.ca_bundle(webhook, NAMESPACE)
    leaf = manager.issue(leaf_name, START)
    with pytest.raises(VerificationError):  # a name the Service does not have
        verify(leaf.cert, bundle, "attacker.agent-sidecar-system.svc", START)
    other = CertManager(docs)  # another installation's CA
    other.issue(ca_name, START)
    with pytest.raises(VerificationError):
        verify(
            other.issue(leaf_name, START).cert,
            bundle,
            "agent-sidecar-webhook.agent-sidecar-system.svc",
            START,
        )
    with pytest.raises(IssuanceError, match="CA Secret does not exist"):
        CertManager(docs).issue(leaf_name, START)  # the CA Issuer is not ready before its CA


def test_item3_the_old_self_signed_leaf_would_change_the_bundle_at_renewal():
    """The finding, reproduced with the emulation: a self-signed leaf (rotationPolicy Always)
    that cainjector copies as its own CA is a new bundle at every renewal."""
    docs = build("prod")
    webhook = find(docs, "MutatingWebhookConfiguration", "agent-sidecar")
    leaf = find(docs, "Certificate", "agent-sidecar-webhook")
    old_leaf = {
        **leaf,
        "spec": {
            **leaf["spec"],
            "issuerRef": {"name": "agent-sidecar-selfsigned", "kind": "Issuer"},
        },
    }
    old_webhook = {
        **webhook,
        "metadata": {
            **webhook["metadata"],
            "annotations": {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/agent-sidecar-webhook"},
        },
    }
    manager = CertManager([find(docs, "Issuer", "agent-sidecar-selfsigned"), old_leaf])
    manager.issue("agent-sidecar-webhook", START)
    bundle = manager.ca_bundle(old_webhook, NAMESPACE)
    at = manager.renewal_time("agent-sidecar-webhook")
    renewed = manager.issue("agent-sidecar-webhook", at)
    assert manager.ca_bundle(old_webhook, NAMESPACE) != bundle
    with pytest.raises(VerificationError):
        verify(renewed.cert, bundle, leaf["spec"]["dnsNames"][0], at)
