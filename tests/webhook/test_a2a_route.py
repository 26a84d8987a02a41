"""Issue 34 (deliverable 5): the webhook routes a pod's A2A port through the sidecar's inbound
listener. The golden files (testdata/a2a-port*.yaml) show the injected pod; these cases show
what goldens cannot: re-admission yields the same pod, and every hostile annotation or port
is refused with the fix, never injected with the agent's port left exposed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sidecar.config import ConfigError
from sidecar.webhook.inject import AdmissionError, mutate
from sidecar.webhook.settings import load_webhook_settings


def _pod(annotation: Any, ports: list[dict[str, Any]]) -> dict[str, Any]:
    annotations = {} if annotation is None else {"agent-sidecar.io/a2a-port": annotation}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "billing", "labels": {"app": "billing"}, "annotations": annotations},
        "spec": {
            "containers": [
                {"name": "agent", "image": "billing:1", "ports": copy.deepcopy(ports)},
                {
                    "name": "helper",
                    "image": "helper:1",
                    "ports": [{"name": "h", "containerPort": 7000}],
                },
            ]
        },
    }


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "w.yaml").write_text("sidecar: {a2a_inbound_port: 8443}\n")
    return load_webhook_settings(tmp_path / "w.yaml")


def _admit(pod: dict[str, Any], settings) -> dict[str, Any]:
    return mutate(pod, namespace="billing", operation="CREATE", enrolled_namespace=True,
                  settings=settings).pod  # fmt: skip


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    [sidecar] = [c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar"]
    return sidecar


def test_item6_a2a_port_moves_to_the_listener_and_readmission_is_identical(settings):
    pod = _admit(_pod("a2a", [{"name": "a2a", "containerPort": 9999}]), settings)
    agent = pod["spec"]["containers"][0]
    assert agent["ports"] == [{"containerPort": 9999}]  # the Service's name now means the listener
    sidecar = _sidecar(pod)
    assert sidecar["ports"] == [{"name": "a2a", "containerPort": 8443, "protocol": "TCP"}]
    args = sidecar["args"]
    assert "a2a_inbound.listen=0.0.0.0:8443" in args
    assert "a2a_inbound.agent_url=http://127.0.0.1:9999" in args
    status = json.loads(pod["metadata"]["annotations"]["agent-sidecar.io/status"])
    assert status["a2a"] == {"container": "agent", "port": 9999, "name": "a2a"}
    # Re-admission (reinvocationPolicy: IfNeeded) restores the name first: one of each.
    again = _admit(copy.deepcopy(pod), settings)
    assert again == pod


def test_item6_a_numeric_annotation_finds_the_named_port(settings):
    pod = _admit(_pod("9999", [{"name": "a2a", "containerPort": 9999}]), settings)
    assert _sidecar(pod)["ports"][0]["name"] == "a2a"


def test_item6_without_the_annotation_nothing_moves(settings):
    pod = _admit(_pod(None, [{"name": "a2a", "containerPort": 9999}]), settings)
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "a2a", "containerPort": 9999}]
    assert "ports" not in _sidecar(pod)
    assert not any(a.startswith("a2a_inbound") for a in _sidecar(pod)["args"])


@pytest.mark.parametrize(
    ("annotation", "ports", "message"),
    [
        ("9999", [{"containerPort": 9999}], "has no name"),
        ("a2a", [], "no agent container declares"),
        ("a2a", [{"name": "a2a", "containerPort": 8443}], "the sidecar's own"),
        ("a2a", [{"name": "a2a", "containerPort": 7445}], "the sidecar's own"),
        ("a2a", [{"name": "a2a", "containerPort": 9999, "protocol": "UDP"}], "not TCP"),
        ("", [{"name": "a2a", "containerPort": 9999}], "must name a port"),
        ("A2A", [{"name": "A2A", "containerPort": 9999}], "has no name"),
        ("x" * 300, [{"name": "a2a", "containerPort": 9999}], "no agent container declares"),
    ],
)
def test_item6_hostile_annotations_and_ports_are_refused(settings, annotation, ports, message):
    pod = _pod(annotation, ports)
    with pytest.raises(AdmissionError, match=message):
        _admit(pod, settings)


def test_item6_annotation_of_the_wrong_type_is_refused(settings):
    pod = _pod(9999, [{"name": "a2a", "containerPort": 9999}])
    with pytest.raises(AdmissionError, match="must name a port"):
        _admit(pod, settings)


@pytest.mark.parametrize("bad", ["0", "65536", "7445", "-1"])
def test_item6_listener_port_setting_is_checked(tmp_path, bad):
    (tmp_path / "w.yaml").write_text(f"sidecar: {{a2a_inbound_port: {bad}}}\n")
    with pytest.raises(ConfigError, match="a2a_inbound_port"):
        load_webhook_settings(tmp_path / "w.yaml")
