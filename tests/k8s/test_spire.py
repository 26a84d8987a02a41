"""Issue 31 item 4: the ClusterSPIFFEID names the class the SPIRE Controller Manager acts on.

The controller reconciles an object only if ``(className == "" && watchClassless) ||
className == config.className`` (spire-controller-manager, pkg/spireentry/reconciler.go,
``reconcileClass``). The hardened helm chart (spiffe/helm-charts-hardened, chart spire 0.30)
sets ``watchClassless: false`` and, when ``controllerManager.className`` is empty (its
default), the class ``RELEASE-NAMESPACE-RELEASE-NAME``: ``spire-server-spire`` for its documented
install ``helm upgrade --install -n spire-server spire spire``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import pytest
import yaml

from tests.support import crds
from tests.support.kustomize import HAVE_KUBECTL, ROOT, build, find

pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")

CHART_CLASS = "spire-server-spire"  # helm -n spire-server install spire: NAMESPACE-RELEASE


@dataclass(frozen=True)
class ControllerManager:
    """The part of the SPIRE Controller Manager's config that picks which objects it handles."""

    class_name: str
    watch_classless: bool = False  # the hardened chart's default

    def reconciles(self, obj: dict) -> bool:
        name = obj["spec"].get("className", "")
        return (name == "" and self.watch_classless) or name == self.class_name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_item4_the_chart_default_controller_reconciles_the_shipped_clusterspiffeid(overlay):
    obj = find(build(overlay), "ClusterSPIFFEID", "agent-sidecar-agents")
    crds.validate(obj)  # against our schema of the ClusterSPIFFEID API
    assert obj["spec"]["className"] == CHART_CLASS
    assert obj["metadata"]["labels"]["spire.spiffe.io/class-name"] == CHART_CLASS
    assert ControllerManager(CHART_CLASS).reconciles(obj)
    # ... and no other install's controller does (two SPIREs in one cluster stay apart).
    assert not ControllerManager("spire-mgmt-spire").reconciles(obj)
    assert not ControllerManager("spire-mgmt-spire", watch_classless=True).reconciles(obj)


def test_item4_a_class_less_clusterspiffeid_is_ignored_by_the_chart_default():
    """The finding: without className, a watchClassless: false controller gives no SVID."""
    obj = find(build("prod"), "ClusterSPIFFEID", "agent-sidecar-agents")
    classless = {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "className"}}
    assert not ControllerManager(CHART_CLASS).reconciles(classless)


def test_item4_hostile_a_wrong_typed_class_name_is_refused_by_the_crd():
    obj = find(build("prod"), "ClusterSPIFFEID", "agent-sidecar-agents")
    for bad in (42, ["spire-server-spire"], None):
        with pytest.raises(crds.CrdValidationError, match="className"):
            crds.validate({**obj, "spec": {**obj["spec"], "className": bad}})


def test_item4_the_class_is_configurable_by_the_overlay_patch_the_docs_give(tmp_path):
    """docs/kubernetes.md's patch, applied by kustomize to the prod overlay, sets both the class
    and its label, and the result still validates."""
    docs = (ROOT / "docs/kubernetes.md").read_text()
    start = docs.index("<!-- spire-class-patch -->")
    block = docs[start:].split("```yaml\n", 1)[1].split("```", 1)[0]
    overlay = yaml.safe_load(block)
    overlay["resources"] = [os.path.relpath(ROOT / "k8s/overlays/prod", tmp_path)]
    text = yaml.safe_dump(overlay).replace("spire-server-spire", "spire-mgmt-spire")
    (tmp_path / "kustomization.yaml").write_text(text)
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    obj = find(objs, "ClusterSPIFFEID", "agent-sidecar-agents")
    crds.validate(obj)
    assert obj["spec"]["className"] == "spire-mgmt-spire"
    assert obj["metadata"]["labels"]["spire.spiffe.io/class-name"] == "spire-mgmt-spire"
    assert ControllerManager("spire-mgmt-spire").reconciles(obj)
