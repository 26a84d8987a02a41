"""The ``opa`` container (engine ``opa``): OPA's REST API on a unix socket, not TCP.

On the pod's loopback (``127.0.0.1:8181``, no authentication) OPA would be the agent's to
ask: to read every document of its data (``GET /v1/data``), or to run a query of its own
calling ``http.send`` to any URL, as OPA's uid, which the egress lock lets out to the bundle
service. So OPA listens on a socket (mode 0770, OPA's uid and the sidecar's group) in an
in-memory volume that only OPA and the sidecar mount (the admission policy refuses any other
container mounting it); the kubelet's probes use the diagnostic port, which serves health and
metrics only.
"""

from __future__ import annotations

from typing import Any

from sidecar.webhook.settings import WebhookSettings

__all__ = ["VOL_OPA", "VOL_OPA_SOCKET", "opa_container", "opa_dir"]

VOL_OPA = "agent-sidecar-opa-config"
VOL_OPA_SOCKET = "agent-sidecar-opa-socket"


def opa_container(
    settings: WebhookSettings, bundle: str, security: dict[str, Any], resources: dict[str, Any]
) -> dict[str, Any]:
    """OPA as injected: its API on the socket only, health on the diagnostic port."""
    probe = {"path": "/health?bundles", "port": 8282}
    return {
        "name": "opa",
        "image": settings.opa.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "run",
            "--server",
            f"--addr=unix://{settings.opa.socket}",
            "--unix-socket-perm=770",
            "--diagnostic-addr=0.0.0.0:8282",
            "--config-file=/config/opa.yaml",
            f"--set=bundles.agentsidecar.resource=bundles/{bundle}.tar.gz",
        ],
        "volumeMounts": [
            {"name": VOL_OPA, "mountPath": "/config", "readOnly": True},
            {"name": VOL_OPA_SOCKET, "mountPath": opa_dir(settings)},
        ],
        "startupProbe": {
            "httpGet": probe,
            "periodSeconds": 1,
            "failureThreshold": settings.sidecar.startup_seconds,
        },
        "readinessProbe": {"httpGet": probe, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": 8282},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": resources,
        # Its group is the sidecar's: the socket (0770) admits the sidecar and nobody else.
        "securityContext": security,
    }


def opa_dir(settings: WebhookSettings) -> str:
    """Where the socket's volume is mounted (in OPA's container and the sidecar's)."""
    return settings.opa.socket.rsplit("/", 1)[0]
