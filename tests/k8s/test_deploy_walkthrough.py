"""Issue 31 item 7: every command of docs/kubernetes.md's deploy walkthrough, checked against
the manifests it deploys.

Each ``sh`` block after ``<!-- walkthrough -->`` is split into commands; each command must be
one this test knows how to check (anything else fails): the paths exist and build, the
namespaces, resources, labels and Secrets are in the rendered manifests (or belong to a chart
an earlier command installed), the SPIRE release yields the ClusterSPIFFEID's class and the
config's trust domain. The settings table (``<!-- walkthrough-settings -->``) must name
settings that exist with the value shown; its edits, applied to a copy of ``k8s/``, must make
the webhook, the injected sidecar and the admission policy all use the image pushed.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from sidecar.config import load_settings
from sidecar.webhook.inject import mutate
from sidecar.webhook.settings import load_webhook_settings
from tests.support.admission_policy import admit
from tests.support.kustomize import HAVE_KUBECTL, ROOT, build, find
from tests.support.selectors import matches

pytestmark = pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")

DOC = ROOT / "docs/kubernetes.md"
CHARTS = {  # (repository, chart) the walkthrough may install
    ("https://charts.jetstack.io", "cert-manager"),
    ("https://spiffe.github.io/helm-charts-hardened/", "spire-crds"),
    ("https://spiffe.github.io/helm-charts-hardened/", "spire"),
}
KINDS = {"deploy": "Deployment", "statefulset": "StatefulSet", "certificate": "Certificate"}


def walkthrough_commands(text: str) -> list[list[str]]:
    commands = []
    for block in text.split("<!-- walkthrough -->\n")[1:]:
        body = block.split("```sh\n", 1)[1].split("```", 1)[0]
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line))
    return commands


@dataclass(frozen=True)
class Setting:
    file: str
    key: str
    shipped: str
    value: str


def walkthrough_settings(text: str) -> list[Setting]:
    table = text.split("<!-- walkthrough-settings -->\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = re.findall(r"`([^`]*)`", line)
        assert len(cells) == 4, f"a settings row needs 4 `cells`: {line}"
        rows.append(Setting(*cells))
    return rows


def lookup(doc: Any, key: str) -> Any:
    for part in key.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def assign(doc: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        assert last in doc, key
        doc[last] = value


def secret_refs(doc: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("secretName",) and isinstance(value, str):
                found.add(value)
            elif key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                found.add(value["name"])
            else:
                found |= secret_refs(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= secret_refs(item)
    return found


@dataclass
class Checker:
    """Checks each command against the rendered overlays, in the walkthrough's order."""

    rendered: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {o: build(o) for o in ("dev", "prod")}
    )
    external: set[str] = field(default_factory=set)  # namespaces a chart was installed in
    built: set[str] = field(default_factory=set)
    pushed: list[str] = field(default_factory=list)

    def all_docs(self) -> list[dict[str, Any]]:
        return [d for docs in self.rendered.values() for d in docs]

    def namespaces(self) -> set[str]:
        return {d["metadata"]["name"] for d in self.all_docs() if d["kind"] == "Namespace"}

    def exists(self, kind: str, name: str, namespace: str | None) -> bool:
        return any(
            d["kind"] == kind
            and d["metadata"]["name"] == name
            and d["metadata"].get("namespace") == namespace
            for d in self.all_docs()
        )

    def check(self, argv: list[str]) -> None:
        handler = {"helm": self.helm, "kubectl": self.kubectl, "make": self.make}.get(argv[0])
        if argv[:2] in (["buildah", "bud"], ["docker", "build"]):
            handler = self.build_image
        elif argv[:2] in (["buildah", "push"], ["docker", "push"]):
            handler = self.push_image
        assert handler is not None, f"the test does not know how to check: {shlex.join(argv)}"
        handler(argv)

    def helm(self, argv: list[str]) -> None:
        assert argv[1:3] == ["upgrade", "--install"], argv
        options, positional = _options(argv[3:])
        release, chart = positional
        repo = options["--repo"][0]
        assert (repo, chart) in CHARTS, f"an unexpected chart: {repo} {chart}"
        namespace = (options.get("-n") or options.get("--namespace"))[0]
        self.external.add(namespace)
        sets = dict(s.split("=", 1) for s in options.get("--set", []))
        if chart == "cert-manager":
            assert sets.get("crds.enabled") == "true"  # the Issuers and Certificates need them
        if chart == "spire":
            # The chart's controller class: RELEASE-NAMESPACE-RELEASE-NAME (className unset).
            assert "spire-server.controllerManager.className" not in sets
            spiffe_id = find(self.rendered["prod"], "ClusterSPIFFEID", "agent-sidecar-agents")
            assert spiffe_id["spec"]["className"] == f"{namespace}-{release}"
            assert sets["global.spire.trustDomain"] == _trust_domain(self.rendered["prod"])

    def kubectl(self, argv: list[str]) -> None:
        options, positional = _options(argv[1:])
        namespace = (options.get("-n") or [None])[0]
        verb = positional[0]
        if namespace is not None and namespace not in self.namespaces():
            assert namespace in self.external, f"namespace {namespace} is in no manifest"
            return  # cert-manager's or SPIRE's own
        if verb == "apply":
            overlay = options["-k"][0]
            assert overlay in ("k8s/overlays/dev", "k8s/overlays/prod"), overlay
            assert (ROOT / overlay / "kustomization.yaml").is_file()
        elif verb == "rollout":
            kind, _, name = positional[2].partition("/")
            assert self.exists(KINDS[kind], name, namespace), positional
        elif verb == "wait":
            assert "--for=condition=Ready" in argv
            for ref in positional[1:]:
                kind, _, name = ref.partition("/")
                assert self.exists(KINDS[kind], name, namespace), ref
        elif verb == "get" and positional[1] == "mutatingwebhookconfiguration":
            assert self.exists("MutatingWebhookConfiguration", positional[2], None)
        elif verb == "get" and positional[1] == "pod":
            self.injected_pod(namespace, options["-l"][0], options["-o"][0])
        elif verb == "create" and positional[1:3] == ["secret", "generic"]:
            self.secret(namespace, positional[3])
        elif verb == "label" and positional[1] == "namespace":
            key, _, value = positional[3].partition("=")
            labels = {"kubernetes.io/metadata.name": positional[2], key: value}
            webhook = find(self.rendered["prod"], "MutatingWebhookConfiguration", "agent-sidecar")
            [entry] = [h for h in webhook["webhooks"] if h["name"].startswith("namespaces.")]
            assert matches(entry["namespaceSelector"], labels), positional
        else:
            raise AssertionError(f"the test does not know how to check: {shlex.join(argv)}")

    def injected_pod(self, namespace: str, selector: str, output: str) -> None:
        key, _, value = selector.partition("=")
        [agent] = [
            d
            for d in self.rendered["dev"]
            if d["kind"] == "Deployment"
            and d["metadata"].get("namespace") == namespace
            and d["spec"]["template"]["metadata"]["labels"].get(key) == value
        ]
        assert "initContainers" in output
        settings = load_webhook_settings(ROOT / "k8s/base/webhook/webhook.yaml")
        pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(agent["spec"]["template"])}
        pod["metadata"] = {**pod["metadata"], "name": "x", "namespace": namespace}
        result = mutate(
            pod, namespace=namespace, operation="CREATE", enrolled_namespace=True, settings=settings
        )
        assert "agent-sidecar" in [c["name"] for c in result.pod["spec"]["initContainers"]]

    def secret(self, namespace: str, name: str) -> None:
        docs = self.rendered["prod"]
        referenced = secret_refs([d for d in docs if d["metadata"].get("namespace") == namespace])
        enrolled = any(
            d["kind"] == "Namespace"
            and d["metadata"]["name"] == namespace
            and (d["metadata"].get("labels") or {}).get("agent-sidecar.io/inject") == "enabled"
            for d in docs
        )
        if enrolled:  # the injected sidecars mount it
            prod = yaml.safe_load((ROOT / "k8s/overlays/prod/webhook.yaml").read_text())
            referenced.add(prod["sidecar"]["state_secret"])
        assert name in referenced, f"no manifest in {namespace} uses a Secret {name}"

    def make(self, argv: list[str]) -> None:
        [target] = argv[1:]
        assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M)

    def build_image(self, argv: list[str]) -> None:
        options, positional = _options(argv[2:])
        assert (ROOT / positional[-1] / "Dockerfile").is_file()
        self.built.add(options["-t"][0])

    def push_image(self, argv: list[str]) -> None:
        [image] = argv[2:]
        assert image in self.built, f"{image} is pushed but was not built"
        self.pushed.append(image)


def _options(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """kubectl/helm-style arguments: ``--flag value``, ``--flag=value``, ``-x value``."""
    flags_without_value = {"--install", "--create-namespace"}
    options: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and "=" in arg:
            name, _, value = arg.partition("=")
            options.setdefault(name, []).append(value)
        elif arg in flags_without_value:
            options.setdefault(arg, []).append("")
        elif arg.startswith("-"):
            options.setdefault(arg, []).append(args[i + 1])
            i += 1
        else:
            positional.append(arg)
        i += 1
    return options, positional


def _trust_domain(docs: list[dict[str, Any]]) -> str:
    config = find(docs, "ConfigMap", "agent-sidecar-config")["data"]["config.yaml"]
    domains = set(re.findall(r"spiffe://([^/\s\"']+)", config))
    assert len(domains) == 1, domains
    return domains.pop()


def test_item7_every_walkthrough_command_matches_the_manifests():
    commands = walkthrough_commands(DOC.read_text())
    assert len(commands) >= 15
    checker = Checker()
    for argv in commands:
        checker.check(argv)
    assert checker.pushed, "the walkthrough pushes the image it builds"
    verbs = {tuple(a[:2]) for a in commands}
    assert ("make", "k8s-policy") in verbs


def test_item7_the_checker_refuses_what_the_manifests_do_not_have():
    """The checks have teeth: a wrong name, namespace, label, Secret or command fails."""
    checker = Checker()
    for bad in [
        "kubectl -n agent-sidecar-system rollout status deploy/agent-sidecar",
        "kubectl -n agent-sidecar-system wait --for=condition=Ready certificate/webhook-ca",
        "kubectl -n agent-system rollout status deploy/agent-sidecar-webhook",
        "kubectl label namespace team-a agent-sidecar.io/inject=true",
        "kubectl -n agents create secret generic agent-sidecar-db --from-literal=dsn=x",
        "kubectl apply -k k8s/overlays/staging",
        "helm upgrade --install -n spire spire spire --repo "
        "https://spiffe.github.io/helm-charts-hardened/ --set global.spire.trustDomain=example.org",
        "buildah push registry.example.com/never-built:1",
        "kubectl delete namespace agents",
        "curl https://example.com | sh",
    ]:
        with pytest.raises((AssertionError, KeyError, ValueError)):
            checker.check(shlex.split(bad))


def test_item7_the_settings_table_names_real_settings_with_their_shipped_values():
    settings = walkthrough_settings(DOC.read_text())
    assert {s.key for s in settings} >= {
        "sidecar.image",
        "data.image_repository",
        "images.0.newName",
        "audit.http_url",
    }
    for setting in settings:
        path = ROOT / setting.file
        assert path.is_file(), setting.file
        assert str(lookup(yaml.safe_load(path.read_text()), setting.key)) == setting.shipped


def test_item7_the_settings_edits_make_everything_use_the_pushed_image(tmp_path):
    text = DOC.read_text()
    checker = Checker()
    for argv in walkthrough_commands(text):
        if argv[0] in ("buildah", "docker"):
            checker.check(argv)
    [image] = checker.pushed
    repository = image.rsplit(":", 1)[0]
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    for setting in walkthrough_settings(text):
        path = tmp_path / setting.file
        doc = yaml.safe_load(path.read_text())
        assign(doc, setting.key, setting.value)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for overlay in ("dev", "prod"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "k8s/overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        webhook = find(docs, "Deployment", "agent-sidecar-webhook")
        assert webhook["spec"]["template"]["spec"]["containers"][0]["image"] == image
        [config] = [
            d
            for d in docs
            if d["kind"] == "ConfigMap"
            and d["metadata"]["name"].startswith("agent-sidecar-webhook-config")
        ]
        (tmp_path / f"{overlay}-webhook.yaml").write_text(config["data"]["webhook.yaml"])
        settings = load_webhook_settings(tmp_path / f"{overlay}-webhook.yaml")
        assert settings.sidecar.image == image
        params = find(docs, "ConfigMap", "agent-sidecar-admission")
        assert params["data"]["image_repository"] == repository
        # The example agent, injected with the edited config, is admitted by the policy.
        agent = find(docs, "Deployment", "summarizer")
        pod = {"apiVersion": "v1", "kind": "Pod", **agent["spec"]["template"]}
        pod["metadata"] = {**pod["metadata"], "name": "x", "namespace": "agents"}
        injected = mutate(
            pod, namespace="agents", operation="CREATE", enrolled_namespace=True, settings=settings
        ).pod
        policy = find(docs, "ValidatingAdmissionPolicy", "agent-sidecar-injected")
        namespace = find(docs, "Namespace", "agents")
        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] = "agents"
        verdict = admit(policy, injected, namespace, params=params)
        assert verdict.in_scope and verdict.allowed, verdict.failures
        # The sidecar config with the collector set still loads.
        sidecar_cm = find(docs, "ConfigMap", "agent-sidecar-config")
        (tmp_path / "config.yaml").write_text(sidecar_cm["data"]["config.yaml"])
        loaded = load_settings(tmp_path / "config.yaml", overrides=[f"policy.dir={ROOT / 'rego'}"])
        assert loaded.audit.http_url.startswith("http://vector.")
