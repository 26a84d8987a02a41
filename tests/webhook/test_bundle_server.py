"""Issue 27 deliverable 5: the webhook points pods at a bundle server instead of the policy
ConfigMap. The golden files (testdata/bundle-server*.yaml) fix the injected pod; these tests
prove the injected ``--set`` arguments make a valid sidecar config with ``policy.bundle``,
and that the bundle server's token stays the sidecar's."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_settings
from sidecar.policy.export.wiring import build_exports
from sidecar.webhook.inject import AdmissionError, mutate
from sidecar.webhook.settings import BundleServerTemplate, WebhookSettings

ROOT = Path(__file__).resolve().parents[2]
POD_CONFIG = ROOT / "k8s" / "base" / "agents" / "config.yaml"


def _settings(**server) -> WebhookSettings:
    return WebhookSettings(bundle_server=BundleServerTemplate(**server))


def _pod(annotations=None, mounts=None) -> dict:
    agent = {"name": "agent", "image": "agent:1"}
    if mounts:
        agent["volumeMounts"] = mounts
    return {
        "metadata": {
            "name": "a",
            "labels": {"agent-sidecar.io/inject": "enabled"},
            "annotations": {"agent-sidecar.io/policy-source": "bundle-server"}
            if annotations is None
            else annotations,
        },
        "spec": {"containers": [agent]},
    }


def _inject(settings: WebhookSettings, pod: dict) -> dict:
    result = mutate(
        pod, namespace="support", operation="CREATE", enrolled_namespace=False, settings=settings
    )
    assert result.injected, result.reason
    return result.pod


def _sidecar(pod: dict) -> dict:
    return next(c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")


def test_item5_injected_arguments_make_a_valid_bundle_config():
    settings = _settings(
        url="https://bundles.example",
        token_secret="tok",
        ca_config_map="ca",
        signing_key_config_map="key",
        status=True,
        decision_logs=True,
    )
    args = _sidecar(_inject(settings, _pod()))["args"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert not any(o.startswith("policy.dir=") for o in overrides)
    config = load_settings(POD_CONFIG, overrides)
    bundle = config.policy.bundle
    assert bundle is not None
    assert bundle.url == "https://bundles.example/bundles/agentsidecar.tar.gz"
    assert bundle.source.signing is not None and bundle.source.signing.keyid == "signer"
    assert str(bundle.persistence_directory) == "/var/lib/agent-sidecar/bundles"
    assert config.policy.status is not None and config.policy.status.service == "bundles"
    assert config.policy.decision_logs is not None
    # The exports resolve the same service (its token file is read per request).
    exports = build_exports(config.policy, revision=lambda: "r", failing=lambda: False)
    try:
        assert exports.decision_logs is not None and exports.status is not None
    finally:
        exports.close()


def test_item5_the_configmap_stays_the_default_and_can_be_chosen():
    settings = _settings(url="https://bundles.example", default=True)
    pod = _inject(settings, _pod({"agent-sidecar.io/policy-source": "configmap"}))
    assert "policy.dir=/etc/agent-sidecar/policy" in _sidecar(pod)["args"]
    assert "agent-sidecar-policy" in [v["name"] for v in pod["spec"]["volumes"]]
    plain = _inject(_settings(), _pod({}))
    assert "agent-sidecar-policy" in [v["name"] for v in plain["spec"]["volumes"]]


def test_item5_the_token_volume_is_the_sidecars_alone():
    settings = _settings(url="https://bundles.example", token_secret="tok")
    pod = _inject(settings, _pod())
    agent = pod["spec"]["containers"][0]
    assert "agent-sidecar-bundle-token" not in [m["name"] for m in agent["volumeMounts"]]
    stolen = _pod(mounts=[{"name": "agent-sidecar-bundle-token", "mountPath": "/t"}])
    with pytest.raises(AdmissionError, match="only the agent-sidecar container"):
        _inject(settings, stolen)


def test_item5_the_opa_engine_keeps_its_own_bundles():
    settings = _settings(url="https://bundles.example", default=True)
    pod = _inject(settings, _pod({"agent-sidecar.io/engine": "opa"}))
    assert not any("policy.bundle" in a for a in _sidecar(pod)["args"])


@pytest.mark.parametrize(
    ("server", "match"),
    [
        ({"default": True}, "default: needs url"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "https://u:p@x"}, "credentials"),
        ({"url": "https://x", "resource": "bundles/x.tar.gz"}, "resource"),
        ({"url": "https://x", "resource": "../{bundle}"}, "resource"),
        ({"url": "https://x", "token_secret": "Not_A_Name"}, "token_secret"),
        ({"url": "https://x", "signing_algorithm": "HS256"}, "signing_algorithm"),
        ({"url": "https://x", "min_delay_seconds": 0}, "min_delay_seconds"),
    ],
)
def test_item5_a_bad_bundle_server_template_is_refused(server, match):
    with pytest.raises(ValueError, match=match):
        BundleServerTemplate(**server)
