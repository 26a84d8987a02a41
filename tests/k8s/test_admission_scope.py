"""Issue 31 item 6: the admission policies stay out of the system namespaces.

A label in ``kube-system`` (a pod labelled ``agent-sidecar.io/inject: enabled``, or the
namespace itself labelled) must not block the cluster's own pods. The namespace's name label
``kubernetes.io/metadata.name`` is set by the API server and cannot be changed, so a
namespace cannot pass itself off as a system one, or the reverse. Both policies are evaluated
as the API server does (tests/support/admission_policy.py: selectors, then CEL).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.admission_policy import admit

ROOT = Path(__file__).resolve().parents[2]
REQUIRED, _, INJECTED, _ = list(
    yaml.safe_load_all((ROOT / "k8s/base/webhook/validatingadmissionpolicy.yaml").read_text())
)
PARAMS = yaml.safe_load((ROOT / "k8s/base/webhook/admission-params.yaml").read_text())
WEBHOOK = yaml.safe_load((ROOT / "k8s/base/webhook/mutatingwebhookconfiguration.yaml").read_text())
SETTINGS = yaml.safe_load((ROOT / "k8s/base/webhook/webhook.yaml").read_text())
SYSTEM = ["kube-system", "kube-public", "kube-node-lease", "agent-sidecar-system"]


def namespace(name: str, *, enrolled: bool) -> dict:
    labels = {"kubernetes.io/metadata.name": name}
    if enrolled:
        labels["agent-sidecar.io/inject"] = "enabled"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, *, image: str = "registry.k8s.io/coredns/coredns:v1.11.3") -> dict:
    """A labelled pod no policy would admit in an agent namespace: no sidecar, and an
    ``agent-sidecar`` container from a foreign image, another mounting the SPIFFE CSI volume."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "system-pod",
            "namespace": name,
            "labels": {"agent-sidecar.io/inject": "enabled"},
        },
        "spec": {
            "containers": [
                {"name": "agent-sidecar", "image": image},
                {
                    "name": "dns",
                    "image": image,
                    "volumeMounts": [{"name": "spiffe", "mountPath": "/spiffe"}],
                },
            ],
            "volumes": [{"name": "spiffe", "csi": {"driver": "csi.spiffe.io"}}],
        },
    }


def excluded(policy: dict) -> set[str]:
    selector = policy["spec"]["matchConstraints"]["namespaceSelector"]
    return {
        value
        for e in selector["matchExpressions"]
        if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
        for value in e["values"]
    }


@pytest.mark.parametrize("policy", [REQUIRED, INJECTED], ids=["required", "injected"])
@pytest.mark.parametrize("name", SYSTEM)
@pytest.mark.parametrize("enrolled", [True, False], ids=["ns-labelled", "ns-plain"])
def test_item6_no_policy_applies_in_a_system_namespace(policy, name, enrolled):
    verdict = admit(policy, pod(name), namespace(name, enrolled=enrolled), params=PARAMS)
    assert not verdict.in_scope
    for operation, subresource in [("UPDATE", ""), ("UPDATE", "ephemeralcontainers")]:
        again = admit(
            policy, pod(name), namespace(name, enrolled=enrolled), PARAMS, operation, subresource
        )
        assert not again.in_scope


@pytest.mark.parametrize("name", ["support", "kube-systemx", "kube", "default"])
def test_item6_every_other_namespace_is_still_guarded(name):
    """Anywhere else both still refuse: the scoping opened nothing else."""
    unguarded = pod(name)
    unguarded["spec"]["containers"] = unguarded["spec"]["containers"][1:]  # no sidecar
    required = admit(REQUIRED, unguarded, namespace(name, enrolled=True), params=PARAMS)
    assert required.in_scope and not required.allowed
    injected = admit(INJECTED, pod(name), namespace(name, enrolled=False), params=PARAMS)
    assert injected.in_scope and not injected.allowed
    assert any("configured repository" in f for f in injected.failures)
    assert any("credentials" in f for f in injected.failures)


@pytest.mark.parametrize("policy", [REQUIRED, INJECTED], ids=["required", "injected"])
def test_item6_the_policies_skip_every_namespace_the_webhook_skips(policy):
    webhook_skips = {SETTINGS["namespace"], *SETTINGS["skip_namespaces"]}
    for hook in WEBHOOK["webhooks"]:
        for e in hook["namespaceSelector"]["matchExpressions"]:
            if e["key"] == "kubernetes.io/metadata.name":
                webhook_skips |= set(e["values"])
    assert webhook_skips <= excluded(policy)
    assert excluded(policy) == set(SYSTEM)


def test_item6_hostile_a_namespace_without_its_name_label_is_in_scope():
    """(The API server always sets the label; were it missing, NotIn holds: fail closed.)"""
    bare = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}
    assert admit(INJECTED, pod("kube-system"), bare, params=PARAMS).in_scope
