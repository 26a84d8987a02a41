"""Review of issue 28: the webhook refuses a pod whose own containers mount a credential volume."""

from __future__ import annotations

import pytest

from tests.webhook.test_lock_injection import _outcome, _pod, unlocked  # noqa: F401

CREDENTIALS = [
    "agent-sidecar-telemetry",  # the collector's headers (an API key): finding 1
    "agent-sidecar-spiffe",
    "agent-sidecar-state",
    "agent-sidecar-state-dsn",
    "agent-sidecar-opa-socket",
]


@pytest.mark.parametrize("volume", CREDENTIALS)
@pytest.mark.parametrize("key", ["containers", "initContainers", "ephemeralContainers"])
def test_review_1_a_pod_container_mounting_a_credential_volume_is_refused(
    unlocked,  # noqa: F811
    volume,
    key,
):
    """The pod never declares the volume (the webhook adds it): the mount alone is refused."""
    pod = _pod({})
    intruder = {"name": "x", "image": "busybox", "volumeMounts": [
        {"name": volume, "mountPath": "/stolen"}]}  # fmt: skip
    if key == "containers":
        pod["spec"]["containers"][0]["volumeMounts"] = intruder["volumeMounts"]
    else:
        pod["spec"][key] = [intruder]
    outcome = _outcome(unlocked, pod)
    assert outcome["allowed"] is False
    assert f"mounts {volume!r}" in outcome["message"]
    assert "only the agent-sidecar container may mount" in outcome["message"]


def test_review_1_other_mounts_and_reinjection_still_admitted(unlocked):  # noqa: F811
    pod = _pod({"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
               volumes=[{"name": "data", "emptyDir": {}}])  # fmt: skip
    outcome = _outcome(unlocked, pod)
    assert outcome["allowed"], outcome
    # The agent's socket mount, which the webhook itself adds, survives a second injection.
    again = _outcome(unlocked, outcome["pod"])
    assert again["allowed"], again
