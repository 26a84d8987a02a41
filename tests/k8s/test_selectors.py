"""The label selectors the API server applies, evaluated against the golden pods.

Kubernetes decides two things by selector, never the webhook: which pods are sent to which
webhook entry (so opted-out pods never depend on it), and which pods SPIRE gives an SVID (the
ClusterSPIFFEID). Both are checked here against every golden case of tests/webhook/testdata,
with Kubernetes' own selector semantics (tests/support/selectors.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.selectors import matches

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests/webhook/testdata"
CASES = sorted(p.stem for p in TESTDATA.glob("*.yaml") if not p.stem.endswith(".injected"))


def _load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


WEBHOOK = _load("k8s/base/webhook/mutatingwebhookconfiguration.yaml")
SPIFFE_ID = _load("k8s/base/agents/clusterspiffeid.yaml")


def _namespace_labels(spec: dict) -> dict[str, str]:
    labels = {"kubernetes.io/metadata.name": spec["namespace"]}
    if spec["path"] == "/mutate/namespace":
        labels["agent-sidecar.io/inject"] = "enabled"  # what sends a pod to that path
    return labels | spec.get("namespaceLabels", {})


def _routes(pod: dict, namespace_labels: dict[str, str]) -> list[str]:
    """The webhook entries (their paths) the API server would call for this pod."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return [
        hook["clientConfig"]["service"]["path"]
        for hook in WEBHOOK["webhooks"]
        if matches(hook.get("namespaceSelector"), namespace_labels)
        and matches(hook.get("objectSelector"), labels)
    ]


@pytest.mark.parametrize("case", CASES)
def test_the_api_server_sends_each_pod_to_exactly_the_path_its_case_names(case):
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    routes = _routes(spec["object"], _namespace_labels(spec))
    if spec.get("unrouted"):
        assert routes == [], f"{case}: the API server would call the webhook"
    else:
        assert routes == [spec["path"]]


@pytest.mark.parametrize("case", CASES)
def test_every_injected_pod_and_no_other_gets_a_spiffe_id(case):
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    outcome = yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())
    pod = outcome["pod"]
    injected = "agent-sidecar.io/status" in (pod["metadata"].get("annotations") or {})
    selected = matches(SPIFFE_ID["spec"]["podSelector"], pod["metadata"].get("labels") or {})
    selected = selected and matches(SPIFFE_ID["spec"]["namespaceSelector"], _namespace_labels(spec))
    if outcome["allowed"]:  # (a refused pod is never created)
        assert selected == injected, case


def test_an_injected_pod_is_routed_to_the_webhook_again_and_keeps_its_identity():
    """Re-admission (reinvocationPolicy) and the ClusterSPIFFEID see the same label."""
    spec = yaml.safe_load((TESTDATA / "enrolled-namespace.yaml").read_text())
    pod = yaml.safe_load((TESTDATA / "enrolled-namespace.injected.yaml").read_text())["pod"]
    assert _routes(pod, _namespace_labels(spec)) == ["/mutate/pod"]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
        ({}, {"anything": "x"}, True),
    ],
)
def test_selector_semantics_are_kubernetes(selector, labels, expected):
    assert matches(selector, labels) is expected
