"""The injected sidecar's kubelet probes (moved out of inject.py, which holds the mutation)."""

from __future__ import annotations

from typing import Any

from sidecar.health_listener import LIVENESS
from sidecar.webhook.settings import SidecarTemplate

__all__ = ["probes"]


def probes(template: SidecarTemplate) -> dict[str, Any]:
    """Startup (the agent starts only once it passes: SERVING needs the SVID), readiness,
    and liveness (the process answers; restarting would not bring an SVID back)."""
    if template.health_port:
        ready: dict[str, Any] = {"grpc": {"port": template.health_port}}
        live: dict[str, Any] = {"grpc": {"port": template.health_port, "service": LIVENESS}}
    else:  # gRPC health on the agent listener, asked from inside the container
        ready = {"exec": {"command": ["agent-sidecar", "health", "--addr", template.agent_address]}}
        live = ready
    return {
        "startupProbe": {
            **ready,
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": template.startup_seconds,
        },
        "readinessProbe": {**ready, "periodSeconds": 5, "timeoutSeconds": 3},
        "livenessProbe": {
            **live,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }
