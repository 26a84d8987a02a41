"""Pod mutation: a pure function from (pod, admission facts, settings) to the injected pod.

When to inject, in this order (the first that applies decides, as in Istio's injector):

1. only ``CREATE`` of a Pod is injected;
2. never in the webhook's own namespace, ``kube-system`` or ``kube-public`` (configurable);
3. never a ``hostNetwork`` pod (its loopback is the node's, so the agent API would be too);
4. annotation values are validated: ``agent-sidecar.io/inject`` (``true``/``false``),
   ``agent-sidecar.io/engine``, ``agent-sidecar.io/identity-mode`` and
   ``agent-sidecar.io/policy-bundle`` against the allow-lists; an invalid one is an admission
   error, never a silent default;
5. annotation ``agent-sidecar.io/inject: "false"`` opts a pod out;
6. the pod label ``agent-sidecar.io/inject: "true"``, or an enrolled namespace, opts it in;
   anything else is left alone.

What is injected: the ``agent-sidecar`` container, an ``opa`` container when the engine is
``opa``, the SPIFFE Workload API socket (CSI driver volume, mounted into the sidecar only),
the config volumes, and ``AGENT_SIDECAR_ADDR`` (and ``OPENAI_BASE_URL`` when the model front
door is configured) in every agent container. The status annotation
``agent-sidecar.io/status`` records what was injected; a pod that already carries it has
those items removed first, so re-admission (``reinvocationPolicy: IfNeeded``) yields exactly
one of each.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.errors import SidecarError
from sidecar.webhook.settings import Resources, WebhookSettings

__all__ = ["AdmissionError", "InjectionResult", "mutate"]

PREFIX = "agent-sidecar.io/"
INJECT = PREFIX + "inject"
STATUS = PREFIX + "status"
ENGINE = PREFIX + "engine"
IDENTITY = PREFIX + "identity-mode"
BUNDLE = PREFIX + "policy-bundle"

SIDECAR = "agent-sidecar"
OPA = "opa"
VOL_CONFIG = "agent-sidecar-config"
VOL_POLICY = "agent-sidecar-policy"
VOL_SPIFFE = "agent-sidecar-spiffe"
VOL_STATE = "agent-sidecar-state"
VOL_OPA = "agent-sidecar-opa-config"
SPIFFE_DIR = "/spiffe-workload-api"
SPIFFE_SOCKET = f"unix://{SPIFFE_DIR}/spire-agent.sock"
STATUS_VERSION = 1


class AdmissionError(SidecarError):
    """The pod cannot be admitted as it is (an invalid annotation): ``allowed: false``."""


@dataclass(frozen=True)
class InjectionResult:
    injected: bool
    reason: str
    pod: dict[str, Any]


def mutate(
    pod: dict[str, Any],
    *,
    namespace: str,
    operation: str,
    enrolled_namespace: bool,
    settings: WebhookSettings,
) -> InjectionResult:
    """Decide and, if so, inject. Never modifies ``pod``; raises :class:`AdmissionError`."""
    skip = _skip_reason(pod, namespace, operation, enrolled_namespace, settings)
    if skip is not None:
        return InjectionResult(False, skip, pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    engine = annotations.get(ENGINE, settings.default_engine)
    identity = annotations.get(IDENTITY, settings.default_identity_mode)
    bundle = annotations.get(BUNDLE, settings.allowed_policy_bundles[0])
    mutated = _strip_previous(copy.deepcopy(pod))
    spec = mutated.setdefault("spec", {})
    containers = spec.setdefault("containers", [])
    for container in containers:
        _set_env(container, "AGENT_SIDECAR_ADDR", settings.sidecar.agent_address)
        if settings.sidecar.model_front_door_url:
            _set_env(container, "OPENAI_BASE_URL", settings.sidecar.model_front_door_url)
    containers.append(_sidecar(settings, engine, identity))
    volumes = spec.setdefault("volumes", [])
    volumes += _volumes(settings, engine, bundle)
    injected = [SIDECAR]
    if engine == "opa":
        containers.append(_opa(settings, bundle))
        injected.append(OPA)
    status = {
        "version": STATUS_VERSION,
        "containers": injected,
        "volumes": [v["name"] for v in _volumes(settings, engine, bundle)],
        "engine": engine,
        "identity_mode": identity,
        "policy_bundle": bundle,
    }
    meta = mutated.setdefault("metadata", {})
    meta.setdefault("annotations", {})[STATUS] = json.dumps(status, sort_keys=True)
    how = "enrolled namespace" if enrolled_namespace else "pod label"
    return InjectionResult(True, f"injected ({how}; engine {engine}, identity {identity})", mutated)


def _skip_reason(
    pod: dict[str, Any],
    namespace: str,
    operation: str,
    enrolled_namespace: bool,
    settings: WebhookSettings,
) -> str | None:
    if operation != "CREATE":
        return f"operation {operation} is not injected (only CREATE)"
    if namespace == settings.namespace or namespace in settings.skip_namespaces:
        return f"namespace {namespace} is never injected"
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return "hostNetwork pods are never injected (the agent API would be on the node)"
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    _validate(annotations, labels, settings)
    if annotations.get(INJECT) == "false":
        return "opted out by annotation agent-sidecar.io/inject=false"
    if labels.get(INJECT) == "true" or enrolled_namespace:
        return None
    return "not enrolled (no agent-sidecar.io/inject=true label, namespace not enrolled)"


def _validate(annotations: dict[str, Any], labels: dict[str, Any], settings: WebhookSettings):
    checks = [
        (INJECT, annotations.get(INJECT), ("true", "false")),
        (INJECT + " (label)", labels.get(INJECT), ("true", "false")),
        (ENGINE, annotations.get(ENGINE), settings.allowed_engines),
        (IDENTITY, annotations.get(IDENTITY), settings.allowed_identity_modes),
        (BUNDLE, annotations.get(BUNDLE), settings.allowed_policy_bundles),
    ]
    for key, value, allowed in checks:
        if value is not None and value not in allowed:
            raise AdmissionError(
                f"{key}: {value!r} is not one of {', '.join(allowed)}; fix the annotation "
                "or remove it (agent-sidecar never falls back to a default silently)"
            )
    status = annotations.get(STATUS)
    if status is not None:
        try:
            json.loads(status)
        except (TypeError, ValueError) as exc:
            raise AdmissionError(
                f"{STATUS}: not valid JSON (it is written by the webhook)"
            ) from exc


def _strip_previous(pod: dict[str, Any]) -> dict[str, Any]:
    """Remove what an earlier injection added (by the status annotation and by our names)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    status = json.loads(annotations.get(STATUS, "{}"))
    containers = set(status.get("containers", [])) | {SIDECAR, OPA}
    volumes = set(status.get("volumes", [])) | {
        VOL_CONFIG,
        VOL_POLICY,
        VOL_SPIFFE,
        VOL_STATE,
        VOL_OPA,
    }
    spec = pod.get("spec") or {}
    if "containers" in spec:
        kept = []
        for c in spec["containers"]:
            if c.get("name") == OPA and OPA not in status.get("containers", []):
                kept.append(c)  # an agent's own container that happens to be named opa
            elif c.get("name") not in containers:
                kept.append(c)
        spec["containers"] = kept
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in volumes]
    return pod


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = [e for e in container.get("env", []) if e.get("name") != name]
    env.append({"name": name, "value": value})
    container["env"] = env


def _resources(r: Resources) -> dict[str, Any]:
    return {
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
        "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
    }


def _security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _sidecar(settings: WebhookSettings, engine: str, identity: str) -> dict[str, Any]:
    template = settings.sidecar
    args = [
        "serve",
        "--config",
        "/etc/agent-sidecar/config.yaml",
        "--set",
        f"policy.engine={engine}",
        "--set",
        f"identity.mode={identity}",
        "--set",
        f"identity.socket={SPIFFE_SOCKET}",
    ]
    if template.model_front_door_url:
        front = urlsplit(template.model_front_door_url)
        args += ["--set", f"frontdoor.listen=127.0.0.1:{front.port}"]
    if engine == "opa":
        args += ["--set", "policy.opa_url=http://127.0.0.1:8181"]
    else:
        args += ["--set", "policy.dir=/etc/agent-sidecar/policy"]
    mounts = [
        {
            "name": VOL_CONFIG,
            "mountPath": "/etc/agent-sidecar/config.yaml",
            "subPath": "config.yaml",
            "readOnly": True,
        },
        {"name": VOL_SPIFFE, "mountPath": SPIFFE_DIR, "readOnly": True},
        {"name": VOL_STATE, "mountPath": "/var/lib/agent-sidecar"},
    ]
    if engine != "opa":
        mounts.append(
            {"name": VOL_POLICY, "mountPath": "/etc/agent-sidecar/policy", "readOnly": True}
        )
    return {
        "name": SIDECAR,
        "image": template.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": SPIFFE_SOCKET}],
        "volumeMounts": mounts,
        "readinessProbe": {
            # gRPC health on the loopback listener, asked from inside the container.
            "exec": {"command": ["agent-sidecar", "health", "--addr", template.agent_address]},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "resources": _resources(template.resources),
        "securityContext": _security(template.run_as_user),
    }


def _opa(settings: WebhookSettings, bundle: str) -> dict[str, Any]:
    return {
        "name": OPA,
        "image": settings.opa.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "run",
            "--server",
            "--addr=127.0.0.1:8181",
            "--diagnostic-addr=0.0.0.0:8282",
            "--config-file=/config/opa.yaml",
            f"--set=bundles.agentsidecar.resource=bundles/{bundle}.tar.gz",
        ],
        "volumeMounts": [{"name": VOL_OPA, "mountPath": "/config", "readOnly": True}],
        "readinessProbe": {
            "httpGet": {"path": "/health?bundles", "port": 8282},
            "periodSeconds": 5,
        },
        "resources": _resources(settings.opa.resources),
        "securityContext": _security(1000),
    }


def _volumes(settings: WebhookSettings, engine: str, bundle: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": VOL_CONFIG, "configMap": {"name": settings.sidecar.config_map}},
        {"name": VOL_SPIFFE, "csi": {"driver": settings.spiffe_csi_driver, "readOnly": True}},
        {"name": VOL_STATE, "emptyDir": {}},
    ]
    if engine == "opa":
        volumes.append({"name": VOL_OPA, "configMap": {"name": settings.opa.config_map}})
    else:
        volumes.append(
            {
                "name": VOL_POLICY,
                "configMap": {
                    "name": f"agent-sidecar-policy-{bundle}",
                    "items": [
                        {"key": "authz.rego", "path": "agentsidecar/authz/authz.rego"},
                        {"key": "data.json", "path": "agentsidecar/data.json"},
                    ],
                },
            }
        )
    return volumes
