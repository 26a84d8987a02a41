"""Routing a pod's A2A port through the sidecar's inbound listener (docs/kubernetes.md, A2A).

The annotation ``agent-sidecar.io/a2a-port`` names the agent's A2A server port: the name (or
number) of a *named* ``containerPort`` of one of the agent's containers. The webhook then

* moves the port's name from the agent's container to the sidecar's listener port
  (``sidecar.a2a_inbound_port``), so a Service whose ``targetPort`` is that name reaches the
  listener, which verifies every caller before anything reaches the agent;
* starts the sidecar with ``a2a_inbound.listen=0.0.0.0:LISTENER`` and
  ``a2a_inbound.agent_url=http://127.0.0.1:PORT`` (the agent's server, on the pod's loopback);
* records the move in the status annotation, so re-admission restores the name first.

An unnamed port is refused: a Service could only target it by number, which reaches the agent
directly. Why a name and not a rewrite of Services: the webhook admits Pods; their Services
already select by name, and the name is the one thing both sides share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sidecar.webhook.settings import SidecarTemplate

__all__ = ["A2A_PORT", "A2aRoute", "A2aRouteError", "plan", "restore", "route"]

A2A_PORT = "agent-sidecar.io/a2a-port"
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")


class A2aRouteError(ValueError):
    """The annotation cannot be honoured as written: the pod is refused with this message."""


@dataclass(frozen=True)
class A2aRoute:
    """Where the agent serves A2A, and where the sidecar's listener takes its place."""

    container: str
    agent_port: int
    name: str
    listener_port: int

    def sidecar_args(self) -> list[str]:
        return [
            "--set",
            f"a2a_inbound.listen=0.0.0.0:{self.listener_port}",
            "--set",
            f"a2a_inbound.agent_url=http://127.0.0.1:{self.agent_port}",
        ]

    def sidecar_port(self) -> dict[str, Any]:
        return {"name": self.name, "containerPort": self.listener_port, "protocol": "TCP"}

    def status(self) -> dict[str, Any]:
        return {"a2a": {"container": self.container, "port": self.agent_port, "name": self.name}}


def plan(
    spec: dict[str, Any],
    agents: list[str],
    annotations: dict[str, Any],
    *,
    listener_port: int,
    reserved: set[int],
) -> A2aRoute | None:
    """The route the annotation asks for (``None`` without it), and the agent's port unnamed.

    ``reserved``: ports the sidecar already uses on the pod's network (its probes); the
    agent's A2A port may not be one of them, nor the listener's."""
    if A2A_PORT not in annotations:
        return None
    wanted = annotations[A2A_PORT]
    if not isinstance(wanted, str) or not wanted:
        raise A2aRouteError(f"{A2A_PORT}: must name a port of the agent (a name or a number)")
    for container in spec.get("containers") or []:
        if container.get("name") not in agents:
            continue
        for port in container.get("ports") or []:
            if wanted not in (port.get("name"), str(port.get("containerPort"))):
                continue
            name, number = port.get("name"), port.get("containerPort")
            if not isinstance(name, str) or not _PORT_NAME.fullmatch(name):
                raise A2aRouteError(
                    f"{A2A_PORT}: port {wanted} of container {container.get('name')} has no "
                    "name; name it and target the name from its Service (a Service targeting "
                    "the number would reach the agent without the sidecar)"
                )
            if not isinstance(number, int) or number in reserved | {listener_port}:
                raise A2aRouteError(
                    f"{A2A_PORT}: port {number} is the sidecar's own (its listener "
                    f"{listener_port} or its probes); move the agent's A2A server"
                )
            if port.get("protocol", "TCP") != "TCP":
                raise A2aRouteError(f"{A2A_PORT}: port {wanted} is not TCP")
            del port["name"]
            return A2aRoute(str(container["name"]), number, name, listener_port)
    raise A2aRouteError(
        f"{A2A_PORT}: no agent container declares the port {wanted!r}; declare it as a "
        "named containerPort"
    )


def route(
    spec: dict[str, Any],
    agents: list[str],
    annotations: dict[str, Any],
    template: SidecarTemplate,
    sidecar: dict[str, Any],
) -> dict[str, Any]:
    """Apply the annotation to the pod and the sidecar container; the status it adds."""
    reserved = {template.health_port} - {0}
    planned = plan(
        spec, agents, annotations, listener_port=template.a2a_inbound_port, reserved=reserved
    )
    if planned is None:
        return {}
    sidecar["args"] += planned.sidecar_args()
    sidecar.setdefault("ports", []).append(planned.sidecar_port())
    return planned.status()


def restore(spec: dict[str, Any], status: dict[str, Any]) -> None:
    """Give the agent's port back the name an earlier injection moved (re-admission)."""
    moved = status.get("a2a")
    if not isinstance(moved, dict):
        return
    for container in spec.get("containers") or []:
        if container.get("name") != moved.get("container"):
            continue
        for port in container.get("ports") or []:
            name = moved.get("name")
            if port.get("containerPort") == moved.get("port") and isinstance(name, str):
                port.setdefault("name", name)
