"""The Kubernetes manifests: both overlays build with `kubectl kustomize`, every object
validates against the Kubernetes OpenAPI schema (strict), the settings they carry load with
the real loaders, and the example agent, injected, is a valid pod."""

from __future__ import annotations

import kubernetes_validate
import pytest

from sidecar.config import load_settings
from sidecar.webhook.inject import SPIFFE_SOCKET, mutate
from sidecar.webhook.settings import load_webhook_settings
from tests.support import crds
from tests.support.kustomize import HAVE_KUBECTL, ROOT, build, find

K8S_VERSION = "1.32.0"
# Custom resources (cert-manager, SPIRE): validated against our own schemas of their APIs,
# in tests/k8s/testdata/crds (tests/support/crds.py).
CUSTOM = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"),
}

pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_validates(overlay):
    docs = build(overlay)
    assert len(docs) >= 15
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM:
            crds.validate(doc)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_webhook_is_registered_safely(overlay):
    docs = build(overlay)
    config = find(docs, "MutatingWebhookConfiguration", "agent-sidecar")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "agent-sidecar-system/agent-sidecar-webhook-ca"
    )
    paths = set()
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] <= 5
        assert hook["reinvocationPolicy"] == "IfNeeded"
        excluded = [
            e
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        ]
        assert {"agent-sidecar-system", "kube-system"} <= set(excluded[0]["values"])
        assert "objectSelector" in hook
        paths.add(hook["clientConfig"]["service"]["path"])
    assert paths == {"/mutate/pod", "/mutate/namespace"}
    deployment = find(docs, "Deployment", "agent-sidecar-webhook")
    assert deployment["spec"]["replicas"] == {"dev": 1, "prod": 3}[overlay]
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    find(docs, "PodDisruptionBudget", "agent-sidecar-webhook")
    find(docs, "ValidatingAdmissionPolicy", "agent-sidecar-required")
    find(docs, "ValidatingAdmissionPolicyBinding", "agent-sidecar-required")
    account = find(docs, "ServiceAccount", "agent-sidecar-webhook")
    assert account["automountServiceAccountToken"] is False
    assert not [
        d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]


def test_the_configs_in_the_config_maps_load(tmp_path):
    docs = build("prod")
    # (kustomize suffixes the generated name with a content hash; the Deployment follows it)
    [webhook_yaml] = [
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"].startswith("agent-sidecar-webhook-config-")
    ]
    volumes = find(docs, "Deployment", "agent-sidecar-webhook")["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": webhook_yaml["metadata"]["name"]}} in (
        volumes["volumes"]
    )
    (tmp_path / "webhook.yaml").write_text(webhook_yaml["data"]["webhook.yaml"])
    settings = load_webhook_settings(tmp_path / "webhook.yaml")
    sidecar_cm = find(docs, "ConfigMap", "agent-sidecar-config")
    (tmp_path / "config.yaml").write_text(sidecar_cm["data"]["config.yaml"])
    policy_cm = find(docs, "ConfigMap", "agent-sidecar-policy-agentsidecar")
    policy_dir = tmp_path / "policy" / "agentsidecar"
    (policy_dir / "authz").mkdir(parents=True)
    (policy_dir / "authz" / "authz.rego").write_text(policy_cm["data"]["authz.rego"])
    (policy_dir / "data.json").write_text(policy_cm["data"]["data.json"])
    # The example agent, injected with that webhook config, is a valid pod.
    agent = find(docs, "Deployment", "summarizer")
    pod = {"apiVersion": "v1", "kind": "Pod", **agent["spec"]["template"]}
    pod["metadata"] = {**pod["metadata"], "name": "summarizer-x", "namespace": "agents"}
    result = mutate(
        pod, namespace="agents", operation="CREATE", enrolled_namespace=False, settings=settings
    )
    assert result.injected
    kubernetes_validate.validate(result.pod, K8S_VERSION, strict=True)
    # The sidecar config with exactly the overrides the webhook injected (policy.dir moved
    # to where this test wrote the policy) loads, and its policy compiles.
    [sidecar] = [c for c in result.pod["spec"]["initContainers"] if c["name"] == "agent-sidecar"]
    args = sidecar["args"]
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    overrides = [
        f"policy.dir={tmp_path / 'policy'}" if o.startswith("policy.dir=") else o for o in overrides
    ]
    loaded = load_settings(tmp_path / "config.yaml", overrides=overrides)
    assert loaded.identity.mode == "pod" and not loaded.identity.pod_tcp
    assert loaded.server.listen == ("unix:///run/agent-sidecar/agent.sock",)
    assert loaded.server.socket_group == str(settings.sidecar.socket_group)
    assert loaded.identity.socket == SPIFFE_SOCKET
    from sidecar.policy import EmbeddedEngine

    EmbeddedEngine.from_dir(loaded.policy.dir, loaded.policy.query, workers=1).close()


def test_the_policy_copy_in_k8s_is_current():
    copies = ROOT / "k8s/base/agents/policy"
    for name in ("authz.rego", "mcp.rego", "a2a.rego"):
        assert (copies / name).read_text() == (
            ROOT / "rego/agentsidecar/authz" / name
        ).read_text(), "run `make k8s-policy`"
    assert (copies / "data.json").read_text() == (
        ROOT / "rego/agentsidecar/data.json"
    ).read_text(), "run `make k8s-policy`"
