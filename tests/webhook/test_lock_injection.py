"""The webhook's side of the egress lock and of issue 31's low findings, over real HTTPS
(the same server and AdmissionReview as the golden tests): pods the lock cannot protect are
refused with the reason, the rest hardened; our names are refused, never silently replaced;
probes that cost nothing per period; a size limit on the sidecar's volume."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import ConfigError
from sidecar.webhook.settings import load_webhook_settings
from tests.webhook.test_webhook import K8S_VERSION, TESTDATA, _admit, _start

LOCK = {"egress_lock": {"enabled": True}}


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    server = _start(tmp_path_factory.mktemp("webhook"), LOCK)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unlocked(tmp_path_factory):
    server = _start(tmp_path_factory.mktemp("webhook"), {})
    yield server
    server.stop()


def _pod(agent: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "support", "labels": {"app": "a"}},
        "spec": {"containers": [{"name": "agent", "image": "registry.example.com/a:1", **agent}],
                 **spec},
    }  # fmt: skip


def _outcome(server, pod: dict[str, Any]) -> dict[str, Any]:
    return _admit(server, "/mutate/namespace", "support", "CREATE", pod)


@pytest.mark.parametrize(
    ("agent", "spec", "words"),
    [
        ({"securityContext": {"runAsUser": 65532}}, {}, "runs as uid 65532"),
        ({"securityContext": {"runAsUser": 65533}}, {}, "runs as uid 65533"),
        ({}, {"securityContext": {"runAsUser": 65532}}, "runs as uid 65532"),
        ({}, {}, "set runAsUser"),
        ({"securityContext": {"runAsNonRoot": True}}, {}, "set runAsUser"),
        ({"securityContext": {"runAsUser": 1, "privileged": True}}, {}, "privileged"),
        ({"securityContext": {"runAsUser": 1, "capabilities": {"add": ["NET_RAW"]}}}, {},
         "adds NET_RAW"),
        ({"securityContext": {"runAsUser": 1, "capabilities": {"add": ["cap_net_admin"]}}}, {},
         "adds NET_ADMIN"),
        ({"securityContext": {"runAsUser": 0, "capabilities": {"add": ["SETUID"]}}}, {},
         "adds SETUID"),
        ({"securityContext": {"runAsUser": 0, "capabilities": {"add": ["ALL"]}}}, {},
         "adds ALL"),
        ({"securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": True}}, {},
         "allowPrivilegeEscalation: true"),
        ({"securityContext": {"runAsUser": "0"}}, {}, "is not an integer"),
        ({"securityContext": {"runAsUser": True}}, {}, "is not an integer"),
        ({"securityContext": {"runAsUser": 1, "capabilities": {"add": "NET_RAW"}}}, {},
         "capabilities must be lists"),
        ({"securityContext": ["runAsUser", 1]}, {}, "securityContext is not an object"),
    ],
    ids=[
        "sidecar-uid", "opa-uid", "pod-level-sidecar-uid", "image-chosen-uid", "non-root-only",
        "privileged", "net-raw", "net-admin-lowercase", "setuid", "all", "privilege-escalation",
        "uid-as-string", "uid-as-bool", "caps-as-string", "context-as-list",
    ],
)  # fmt: skip
def test_lock_walkaround_the_webhook_refuses_an_agent_the_lock_cannot_hold(
    locked, unlocked, agent, spec, words
):
    """Finding: neither the webhook nor the admission policy refused these pods."""
    outcome = _outcome(locked, _pod(agent, **spec))
    assert outcome["allowed"] is False, outcome
    assert words in outcome["message"]
    if words not in (
        "is not an integer",
        "capabilities must be lists",
        "securityContext is not an object",
    ):
        assert "Egress lock" in outcome["message"]  # where the docs explain it
        assert _outcome(unlocked, _pod(agent, **spec))["allowed"]  # no lock, no refusal


def test_lock_walkaround_a_users_container_named_opa_is_no_exemption(locked):
    """Finding: a container named opa skipped the uid check (embedded engine: it is theirs)."""
    pod = _pod({"securityContext": {"runAsUser": 1001}})
    pod["spec"]["containers"].append(
        {"name": "opa", "image": "openpolicyagent/opa:1.4.2-static",
         "securityContext": {"runAsUser": 65533}}
    )  # fmt: skip
    outcome = _outcome(locked, pod)
    assert outcome["allowed"] is False and "containers 'opa'" in outcome["message"]


def test_lock_walkaround_the_webhook_hardens_every_container_of_the_pod(locked):
    """A root agent keeps NET_RAW and SETUID by default: dropped, and no escalation; a
    container that drops ALL already is left as it is. Readmission changes nothing."""
    pod = _pod(
        {"securityContext": {"runAsUser": 0, "capabilities": {"add": ["CHOWN"]}}},
        initContainers=[{"name": "prepare", "image": "registry.example.com/p:1",
                         "securityContext": {"runAsUser": 1001,
                                             "capabilities": {"drop": ["ALL"]}}}],
    )  # fmt: skip
    first = _outcome(locked, pod)
    assert first["allowed"], first
    injected = first["pod"]
    [agent] = injected["spec"]["containers"]
    assert agent["securityContext"] == {
        "runAsUser": 0,
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["CHOWN"], "drop": ["NET_RAW", "SETUID", "SETGID"]},
    }
    [prepare] = [c for c in injected["spec"]["initContainers"] if c["name"] == "prepare"]
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert prepare["securityContext"]["allowPrivilegeEscalation"] is False
    again = _admit(locked, "/mutate/pod", "support", "CREATE", injected)
    assert again["pod"] == injected
    kubernetes_validate.validate(injected, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("key", "container", "engine"),
    [
        ("containers", "agent-sidecar", "embedded"),
        ("initContainers", "agent-sidecar-egress-lock", "embedded"),
        ("containers", "opa", "opa"),
    ],
)
def test_name_collision_a_users_container_named_like_ours_is_refused(
    unlocked, key, container, engine
):
    """Finding: user containers named agent-sidecar or agent-sidecar-egress-lock were
    silently removed; one named opa duplicated a name."""
    pod = _pod({})
    pod["metadata"]["annotations"] = {"agent-sidecar.io/engine": engine}
    pod["spec"].setdefault(key, []).append({"name": container, "image": "registry.example.com/x:1"})
    outcome = _outcome(unlocked, pod)
    assert outcome["allowed"] is False
    assert f"container {container!r} has a name agent-sidecar injects" in outcome["message"]


def test_name_collision_a_users_volume_named_like_ours_is_refused_and_opa_is_fine_alone(unlocked):
    pod = _pod({"volumeMounts": [{"name": "agent-sidecar-state", "mountPath": "/s"}]})
    pod["spec"]["volumes"] = [{"name": "agent-sidecar-state", "emptyDir": {}}]
    outcome = _outcome(unlocked, pod)
    assert outcome["allowed"] is False and "volume 'agent-sidecar-state'" in outcome["message"]
    # With the embedded engine, a container of the user's named opa is simply theirs.
    pod = _pod({})
    pod["spec"]["containers"].append({"name": "opa", "image": "openpolicyagent/opa:1.4.2"})
    outcome = _outcome(unlocked, pod)
    assert outcome["allowed"]
    assert [c["name"] for c in outcome["pod"]["spec"]["containers"]] == ["agent", "opa"]


def test_probes_cost_nothing_per_second_and_there_is_a_liveness_probe(unlocked):
    """Finding: the startup probe ran the Python CLI every second; no liveness probe."""
    outcome = _outcome(unlocked, _pod({}, **{}))
    outcome_opa = copy.deepcopy(_pod({}))
    outcome_opa["metadata"]["annotations"] = {"agent-sidecar.io/engine": "opa"}
    pods = [outcome["pod"], _outcome(unlocked, outcome_opa)["pod"]]
    for pod in pods:
        for c in pod["spec"]["initContainers"]:
            probes = [c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c]
            assert "livenessProbe" in c, c["name"]
            assert all("exec" not in p for p in probes), c["name"]  # no process per period
    sidecar = next(c for c in pods[0]["spec"]["initContainers"] if c["name"] == "agent-sidecar")
    assert sidecar["startupProbe"]["grpc"] == {"port": 7445}
    assert sidecar["livenessProbe"]["grpc"] == {"port": 7445, "service": "liveness"}
    assert "server.health_listen=0.0.0.0:7445" in sidecar["args"]


def test_probes_health_port_0_falls_back_to_exec(tmp_path):
    from sidecar.webhook.inject import mutate

    (tmp_path / "w.yaml").write_text("sidecar: {health_port: 0}\n")
    settings = load_webhook_settings(tmp_path / "w.yaml")
    pod = mutate(_pod({}), namespace="support", operation="CREATE", enrolled_namespace=True,
                 settings=settings).pod  # fmt: skip
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["startupProbe"]["exec"]["command"][:2] == ["agent-sidecar", "health"]
    assert "livenessProbe" in sidecar
    assert not any("health_listen" in a for a in sidecar["args"])


def test_state_volume_has_a_size_limit_configurable_never_unlimited(tmp_path):
    """Finding (issue 31, medium; the inject side): the state emptyDir had no sizeLimit."""
    from sidecar.webhook.inject import mutate

    config = tmp_path / "w.yaml"
    for value, expected in (("", "256Mi"), ("sidecar: {state_size_limit: 1Gi}\n", "1Gi")):
        config.write_text(value)
        settings = load_webhook_settings(config)
        pod = mutate(_pod({}), namespace="support", operation="CREATE",
                     enrolled_namespace=True, settings=settings).pod  # fmt: skip
        [state] = [v for v in pod["spec"]["volumes"] if v["name"] == "agent-sidecar-state"]
        assert state["emptyDir"] == {"sizeLimit": expected}
    for bad in ("''", "0", "-1Gi", "unlimited", "1.5Gi", "10Pi", "1Gi; x", "[1]"):
        config.write_text(f"sidecar: {{state_size_limit: {bad}}}\n")
        with pytest.raises(ConfigError, match="state_size_limit"):
            load_webhook_settings(config)


@pytest.mark.parametrize(
    ("lock", "words"),
    [
        ({"allow": [{"cidrs": ["10.0.0.0/8"], "uids": [1337]}]}, "container"),
        ({"allow": [{"cidrs": ["10.0.0.0/8"], "container": "istio-proxy"}]}, "container"),
        ({"allow": [{"cidrs": ["10.0.0.1/8"]}]}, "not a CIDR"),
        ({"allow": [{"cidrs": []}]}, "CIDR"),
        ({"allow": [{"cidrs": ["10.0.0.0/8"], "ports": [70000]}]}, "not a port"),
        ({"allow": [{"cidrs": ["10.0.0.0/8"], "uids": [65532], "container": "x"}]}, "uid 65532"),
        ({"allow": [{"cidrs": ["10.0.0.0/8"], "uids": [1337], "container": "a"},
                    {"cidrs": ["10.0.0.0/8"], "uids": [1337], "container": "b"}]}, "uid 1337"),
        ({"mode": "sidecar"}, "mode"),
        ({"dns": "any"}, "dns"),
        ({"allow_dns": True}, "allow_dns"),
        ({"verify_timeout_seconds": 0}, "verify_timeout_seconds"),
    ],
)  # fmt: skip
def test_mesh_a_bad_lock_setting_is_a_clear_error(tmp_path, lock, words):
    config = tmp_path / "w.yaml"
    config.write_text(yaml.safe_dump({"egress_lock": lock}))
    with pytest.raises(ConfigError, match=words):
        load_webhook_settings(config)


def test_mesh_opa_cannot_share_the_sidecars_uid(tmp_path):
    config = tmp_path / "w.yaml"
    config.write_text("opa: {run_as_user: 65532}\n")
    with pytest.raises(ConfigError, match="run_as_user"):
        load_webhook_settings(config)


def test_mesh_the_named_proxy_may_run_as_its_uid_and_nobody_else(tmp_path):
    from sidecar.webhook.inject import AdmissionError, mutate

    config = tmp_path / "w.yaml"
    config.write_text(yaml.safe_dump({"egress_lock": {"enabled": True, "allow": [
        {"cidrs": ["10.0.0.0/8"], "ports": [443], "uids": [1337], "container": "istio-proxy"}
    ]}}))  # fmt: skip
    settings = load_webhook_settings(config)
    pod = _pod({"securityContext": {"runAsUser": 1001}})
    proxy = {"name": "istio-proxy", "image": "istio/proxyv2:1.27.0",
             "securityContext": {"runAsUser": 1337}}  # fmt: skip
    pod["spec"]["containers"].append(proxy)
    done = mutate(pod, namespace="support", operation="CREATE", enrolled_namespace=True,
                  settings=settings)  # fmt: skip
    assert done.injected
    pod["spec"]["containers"][0]["securityContext"]["runAsUser"] = 1337
    with pytest.raises(AdmissionError, match="runs as uid 1337"):
        mutate(pod, namespace="support", operation="CREATE", enrolled_namespace=True,
               settings=settings)  # fmt: skip


def test_golden_lock_cases_exist():
    for case in ("egress-lock-opa", "egress-lock-init", "egress-lock-no-run-as-user"):
        assert (TESTDATA / f"{case}.injected.yaml").exists()
