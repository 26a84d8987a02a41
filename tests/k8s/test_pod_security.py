"""Pod Security: every pod the webhook injects in the base and prod overlays passes the level
its namespace enforces (``restricted``), checked with an implementation of the rules
(tests/support/pod_security.py); the one privileged thing, the egress lock's node agent,
lives alone in its own ``privileged`` namespace."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import _convert
from sidecar.webhook.inject import mutate
from sidecar.webhook.lock import node_agent_args
from sidecar.webhook.settings import WebhookSettings
from tests.support.kustomize import HAVE_KUBECTL, build, find
from tests.support.pod_security import violations

ROOT = Path(__file__).resolve().parents[2]
ENFORCE = "pod-security.kubernetes.io/enforce"
needs_kubectl = pytest.mark.skipif(not HAVE_KUBECTL, reason="renders the overlays")


def _settings(docs: list[dict[str, Any]]) -> WebhookSettings:
    prefix = "agent-sidecar-webhook-config"  # kustomize adds a content hash
    [config] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix)
    ]
    return _convert(WebhookSettings, yaml.safe_load(config["data"]["webhook.yaml"]), "", ROOT)


def _pod(deployment: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    meta = {**template["metadata"], "name": "example", "namespace": namespace}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


@needs_kubectl
@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("engine", ["embedded", "opa"])
def test_pod_security_every_injected_pod_passes_its_namespaces_level(overlay, engine):
    """Finding: the prod overlay's egress-lock init container (root, NET_ADMIN) violated
    restricted, which its own agents namespace enforces: the example agent was refused."""
    docs = build(overlay)
    settings = _settings(docs)
    namespace = find(docs, "Namespace", "agents")
    level = namespace["metadata"]["labels"][ENFORCE]
    assert level == "restricted"
    pod = _pod(find(docs, "Deployment", "summarizer"), "agents")
    pod["metadata"].setdefault("annotations", {})["agent-sidecar.io/engine"] = engine
    injected = mutate(
        pod, namespace="agents", operation="CREATE", enrolled_namespace=True, settings=settings
    )
    assert injected.injected, injected.reason
    names = [c["name"] for c in injected.pod["spec"]["initContainers"]]
    if overlay == "prod":
        assert names[0] == "agent-sidecar-egress-lock"  # the lock is there, unprivileged
    assert violations(injected.pod, level) == []


@needs_kubectl
def test_pod_security_only_the_node_agent_is_privileged_and_it_is_alone():
    docs = build("prod")
    levels = {
        d["metadata"]["name"]: (d["metadata"].get("labels") or {}).get(ENFORCE)
        for d in docs
        if d["kind"] == "Namespace"
    }
    assert levels["agents"] == levels["agent-sidecar-system"] == "restricted"
    assert levels["agent-sidecar-node"] == "privileged"
    in_node_ns = [d["kind"] for d in docs if d["metadata"].get("namespace") == "agent-sidecar-node"]
    assert sorted(in_node_ns) == ["DaemonSet", "ServiceAccount"]
    daemonset = find(docs, "DaemonSet", "agent-sidecar-egress-lock")
    pod = {"metadata": {}, "spec": daemonset["spec"]["template"]["spec"]}
    assert violations(pod, "baseline")  # why its namespace must be privileged
    assert pod["spec"]["automountServiceAccountToken"] is False


@needs_kubectl
def test_pod_security_the_node_agent_applies_the_webhook_configs_rules():
    docs = build("prod")
    settings = _settings(docs)
    [agent] = find(docs, "DaemonSet", "agent-sidecar-egress-lock")["spec"]["template"]["spec"][
        "containers"
    ]
    assert agent["args"] == node_agent_args(settings)
    assert agent["image"] == settings.sidecar.image
    assert settings.egress_lock.enabled and settings.egress_lock.mode == "node"


def test_pod_security_the_init_mode_needs_a_privileged_namespace():
    """Documented: mode init (the lock installed from inside the pod) needs NET_ADMIN, which
    neither baseline nor restricted allows."""
    outcome = yaml.safe_load(
        (ROOT / "tests/webhook/testdata/egress-lock-init.injected.yaml").read_text()
    )
    found = violations(outcome["pod"], "baseline")
    assert found == ["Capabilities: initContainers[agent-sidecar-egress-lock] adds ['NET_ADMIN']"]


CLEAN = {
    "metadata": {"name": "p"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "i",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    },
}


@pytest.mark.parametrize(
    ("path", "value", "level"),
    [
        (("spec", "hostNetwork"), True, "baseline"),
        (("spec", "hostPID"), True, "baseline"),
        (("spec", "containers", 0, "securityContext", "privileged"), True, "baseline"),
        (("spec", "containers", 0, "securityContext", "capabilities", "add"), ["NET_ADMIN"],
         "baseline"),
        (("spec", "containers", 0, "ports"), [{"containerPort": 1, "hostPort": 1}], "baseline"),
        (("spec", "volumes", 0), {"name": "h", "hostPath": {"path": "/"}}, "baseline"),
        (("spec", "securityContext", "seccompProfile"), {"type": "Unconfined"}, "baseline"),
        (("spec", "securityContext", "sysctls"), [{"name": "net.core.somaxconn", "value": "1"}],
         "baseline"),
        (("spec", "containers", 0, "securityContext", "capabilities", "add"), ["CHOWN"],
         "restricted"),
        (("spec", "containers", 0, "securityContext", "capabilities", "drop"), ["NET_RAW"],
         "restricted"),
        (("spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"), True,
         "restricted"),
        (("spec", "securityContext", "runAsNonRoot"), False, "restricted"),
        (("spec", "containers", 0, "securityContext", "runAsUser"), 0, "restricted"),
        (("spec", "securityContext", "seccompProfile"), {}, "restricted"),
        (("spec", "volumes", 0), {"name": "n", "nfs": {"server": "x", "path": "/"}},
         "restricted"),
    ],
)  # fmt: skip
def test_pod_security_the_checker_catches_each_rule(path, value, level):
    pod = copy.deepcopy(CLEAN)
    assert violations(pod, "restricted") == []
    target: Any = pod
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert violations(pod, level)
    if level == "restricted":
        assert violations(pod, "baseline") == []
