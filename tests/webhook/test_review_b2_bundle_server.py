"""Review B2 findings 8 and 9 on the webhook's bundle server: ``bundle_server.required`` leaves
no pod a way back to the unsigned policy ConfigMap (the webhook refuses it, the admission
policy refuses a sidecar given a policy directory), and ``resource`` takes no placeholder but
``{bundle}``, checked when the config loads rather than failing each admission."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sidecar.webhook.inject import AdmissionError, mutate
from sidecar.webhook.settings import BundleServerTemplate, WebhookSettings
from tests.support.admission_policy import admit

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests/webhook/testdata"
_, _, INJECTED, _ = list(
    yaml.safe_load_all((ROOT / "k8s/base/webhook/validatingadmissionpolicy.yaml").read_text())
)
PARAMS = yaml.safe_load((ROOT / "k8s/base/webhook/admission-params.yaml").read_text())
NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "support", "labels": {"kubernetes.io/metadata.name": "support"}},
}
REQUIRED = "this cluster requires the policy from its bundle server"


def _pod(annotations: dict[str, str]) -> dict:
    return {
        "metadata": {
            "name": "a",
            "labels": {"agent-sidecar.io/inject": "enabled"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    }


def _mutate(settings: WebhookSettings, pod: dict):
    return mutate(
        pod, namespace="support", operation="CREATE", enrolled_namespace=False, settings=settings
    )


REQUIRED_SERVER = WebhookSettings(
    bundle_server=BundleServerTemplate(url="https://bundles.example", required=True)
)


def test_review_b2_8_required_refuses_the_configmap_with_the_reason():
    with pytest.raises(AdmissionError, match=r"configmap is not allowed here.*required"):
        _mutate(REQUIRED_SERVER, _pod({"agent-sidecar.io/policy-source": "configmap"}))


def test_review_b2_8_required_makes_the_bundle_server_every_pods_source():
    result = _mutate(REQUIRED_SERVER, _pod({}))
    assert result.injected
    sidecar = next(c for c in result.pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")
    assert not any("policy.dir=" in a for a in sidecar["args"])
    assert any(a.startswith("policy.bundle.services.bundles.url=") for a in sidecar["args"])


def test_review_b2_8_required_needs_a_url():
    with pytest.raises(ValueError, match="required: needs url"):
        BundleServerTemplate(required=True)


def _params(required: bool) -> dict:
    doc = copy.deepcopy(PARAMS)
    doc["data"]["bundle_server_required"] = "true" if required else "false"
    return doc


def test_review_b2_8_the_admission_policy_refuses_a_policy_directory_where_required():
    configmap_pod = yaml.safe_load((TESTDATA / "embedded-engine.injected.yaml").read_text())["pod"]
    assert admit(INJECTED, configmap_pod, NAMESPACE, _params(False)).allowed
    verdict = admit(INJECTED, configmap_pod, NAMESPACE, _params(True))
    assert not verdict.allowed and any(REQUIRED in f for f in verdict.failures), verdict
    bundle_pod = yaml.safe_load((TESTDATA / "bundle-server.injected.yaml").read_text())["pod"]
    verdict = admit(INJECTED, bundle_pod, NAMESPACE, _params(True))
    assert verdict.allowed, verdict.failures
    # A policy directory slipped in by hand, in either --set form, is refused too.
    for extra in (["--set", "policy.dir=/mine"], ["--set=policy.dir=/mine"]):
        pod = copy.deepcopy(bundle_pod)
        sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")
        sidecar["args"] += extra
        assert not admit(INJECTED, pod, NAMESPACE, _params(True)).allowed


@pytest.mark.parametrize(
    "resource",
    ["bundles/{bundle}/{tenant}.tar.gz", "b/{bundle!r}", "b/{bundle:>9}", "b/{bundle}}", "b/{}"],
    ids=["unknown", "conversion", "spec", "stray-brace", "positional"],
)
def test_review_b2_9_an_unknown_placeholder_is_refused_at_load(resource):
    with pytest.raises(ValueError, match="resource"):
        BundleServerTemplate(url="https://x", resource=resource)


def test_review_b2_9_an_escaped_brace_is_a_brace():
    settings = WebhookSettings(
        bundle_server=BundleServerTemplate(
            url="https://x", default=True, resource="b/{{v1}}/{bundle}.tar.gz"
        )
    )
    sidecar = next(
        c
        for c in _mutate(settings, _pod({})).pod["spec"]["initContainers"]
        if c["name"] == "agent-sidecar"
    )
    assert any(a.endswith("resource=b/{v1}/agentsidecar.tar.gz") for a in sidecar["args"])
