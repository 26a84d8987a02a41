"""The webhook's side of the review findings on the egress lock and OPA (over real HTTPS, the
same server and AdmissionReview as the golden tests): OPA never on the pod's loopback; with
the lock's DNS, a pod naming its own nameservers is refused; DNS servers come only from the
webhook's settings."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sidecar.config import ConfigError
from sidecar.webhook.settings import load_webhook_settings
from tests.webhook.test_lock_injection import _outcome, _pod
from tests.webhook.test_webhook import TESTDATA, _start

DNS = {"egress_lock": {"enabled": True, "dns": "resolvers", "dns_servers": ["10.96.0.10"]}}


@pytest.fixture(scope="module")
def resolving(tmp_path_factory):
    server = _start(tmp_path_factory.mktemp("webhook"), DNS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def no_dns(tmp_path_factory):
    server = _start(tmp_path_factory.mktemp("webhook"), {"egress_lock": {"enabled": True}})
    yield server
    server.stop()


AGENT = {"securityContext": {"runAsUser": 1001}}


@pytest.mark.parametrize(
    "spec",
    [
        {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["203.0.113.53"]}},
        {"dnsPolicy": "None"},
        {"dnsConfig": {"nameservers": ["203.0.113.53"]}},
    ],
    ids=["none-with-nameservers", "none", "extra-nameservers"],
)
def test_review_dns_a_pod_naming_its_own_nameservers_is_refused(resolving, no_dns, spec):
    """MEDIUM: the lock let port 53 out to whatever the pod's resolv.conf named."""
    outcome = _outcome(resolving, _pod(AGENT, **spec))
    assert outcome["allowed"] is False, outcome
    assert "cluster DNS only" in outcome["message"] and "Egress lock" in outcome["message"]
    assert _outcome(no_dns, _pod(AGENT, **spec))["allowed"]  # nothing let out: nothing to widen


def test_review_dns_a_malformed_dns_config_is_a_clear_refusal(resolving):
    outcome = _outcome(resolving, _pod(AGENT, dnsConfig=["203.0.113.53"]))
    assert outcome["allowed"] is False and "dnsConfig: not an object" in outcome["message"]


def test_review_dns_the_lock_takes_the_configured_servers_only(resolving, tmp_path):
    settings = {**DNS["egress_lock"], "mode": "init"}
    server = _start(tmp_path, {"egress_lock": settings})
    try:
        outcome = _outcome(server, _pod(AGENT, dnsConfig={"searches": ["svc.cluster.local"]}))
    finally:
        server.stop()
    assert outcome["allowed"], outcome
    lock = outcome["pod"]["spec"]["initContainers"][0]
    assert lock["args"][-2:] == ["--dns-server", "10.96.0.10"]
    assert "--allow-dns" not in lock["args"]  # never the pod's resolv.conf
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"egress_lock": {"enabled": True, "dns": "resolvers"}}))
    with pytest.raises(ConfigError, match="dns_servers"):
        load_webhook_settings(bad)


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


@pytest.mark.parametrize("case", ["opa-engine", "egress-lock-opa"])
def test_review_opa_is_not_on_the_pods_loopback(case):
    """HIGH: OPA listened on 127.0.0.1:8181 without authentication: the agent could read all its
    data and make it http.send anywhere. Now its API is a 0770 unix socket (OPA's uid, the
    sidecar's group) in a volume only OPA and the sidecar mount."""
    pod = yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())["pod"]
    by_name = {c["name"]: c for c in _containers(pod)}
    opa, sidecar = by_name["opa"], by_name["agent-sidecar"]
    assert "--addr=unix:///run/opa/opa.sock" in opa["args"]
    assert "--unix-socket-perm=770" in opa["args"]
    assert not [a for a in opa["args"] if a.startswith("--addr=") and "unix://" not in a]
    assert "policy.opa_url=unix:///run/opa/opa.sock" in sidecar["args"]
    assert not [a for a in sidecar["args"] if "8181" in a]
    assert opa["securityContext"]["runAsGroup"] == sidecar["securityContext"]["runAsUser"]
    mounting = sorted(
        c["name"]
        for c in _containers(pod)
        if any(m["name"] == "agent-sidecar-opa-socket" for m in c.get("volumeMounts", []))
    )
    assert mounting == ["agent-sidecar", "opa"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "agent-sidecar-opa-socket"]
    assert volume["emptyDir"]["medium"] == "Memory"
    # The only TCP port OPA opens is the diagnostic one (health and metrics, for the kubelet).
    assert [a for a in opa["args"] if "0.0.0.0" in a] == ["--diagnostic-addr=0.0.0.0:8282"]


def test_review_opa_socket_path_is_validated(tmp_path):
    for bad in ("relative/opa.sock", "/opa.sock", "/run/opa/../x", "/run/o pa/opa.sock"):
        path = tmp_path / "w.yaml"
        path.write_text(yaml.safe_dump({"opa": {"socket": bad}}))
        with pytest.raises(ConfigError, match="socket"):
            load_webhook_settings(path)
