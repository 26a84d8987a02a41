"""Pod mutation: a pure function from (pod, admission facts, settings) to the injected pod.

One key, one meaning: the label ``agent-sidecar.io/inject`` says whether a pod gets the
sidecar, on a namespace (``enabled``: every pod in it) and on a pod (``enabled`` or
``disabled``, which wins over its namespace). The API server filters on it
(``objectSelector`` / ``namespaceSelector``), so pods that opt out never reach the webhook.
Annotations carry only per-pod settings.

When to inject, in this order (the first that applies decides, as in Istio's injector):

1. only ``CREATE`` of a Pod is injected;
2. never in the webhook's own namespace, ``kube-system`` or ``kube-public`` (configurable);
3. values are validated: the label against ``enabled``/``disabled``, the annotations
   ``agent-sidecar.io/engine``, ``agent-sidecar.io/identity-mode`` and
   ``agent-sidecar.io/policy-bundle`` against the allow-lists; a bad value, or a key from
   before the labels (the ``agent-sidecar.io/inject`` annotation, label values
   ``true``/``false``), is an admission error that names the fix, never a silent default;
4. the label ``disabled`` opts a pod out; ``enabled``, or an enrolled namespace, opts it in;
5. a ``hostNetwork`` pod that opted in is refused (its loopback is the node's, so the agent
   API would be too), never silently left without its sidecar;
6. a container or volume of the pod's own that bears one of our names (``agent-sidecar``,
   ``agent-sidecar-egress-lock``, ``opa`` with the OPA engine, ``agent-sidecar-*`` volumes)
   is refused with a message, never silently replaced;
7. with the egress lock on, every container of the pod's own is checked and hardened
   (sidecar/webhook/lock.py): one the lock could not hold is refused with the reason.

What is injected:

* ``agent-sidecar`` as a native sidecar (an init container with ``restartPolicy: Always``,
  Kubernetes >= 1.29): it starts, and passes its startup probe, before any other init
  container or the agent, and does not keep a finished Job's pod alive. With
  ``sidecar.native: false`` (older clusters) it is an ordinary container instead. Its
  startup, readiness and liveness probes are native ``grpc:`` probes on
  ``sidecar.health_port`` (sidecar/health_listener.py), answered by the running process
  instead of a CLI started every period; its state ``emptyDir`` has a ``sizeLimit``.
* ``opa`` the same way when the engine is ``opa`` (before the sidecar, which asks it), on
  a unix socket in a volume only it and the sidecar mount (never on the pod's loopback,
  where the agent could query it, read its data or make it ``http.send`` past the lock).
* ``agent-sidecar-egress-lock`` first of all, when ``egress_lock.enabled``: it waits,
  unprivileged, until the node agent has installed the pod's packet filter (mode ``node``),
  or installs it itself as root with ``NET_ADMIN`` (mode ``init``; sidecar/egress_lock/), so
  that only the sidecar's processes open connections leaving the pod.
* the agent API as a unix socket on a shared in-memory volume, mounted read-only into every
  agent container, ``AGENT_SIDECAR_ADDR`` (``AGENT_SIDECAR_MCP_URL`` when the MCP endpoint
  is on, and ``OPENAI_BASE_URL`` when the model front
  door is configured) in each, and the socket's group added to the pod's
  ``supplementalGroups``: only containers that mount it and carry the group can call.
* the SPIFFE Workload API socket (CSI driver volume, mounted into the sidecar only), the
  config volumes, and the label ``agent-sidecar.io/inject: enabled``, so every injected pod,
  however it was enrolled, matches the shipped ClusterSPIFFEID and gets its SVID.

The status annotation ``agent-sidecar.io/status`` records what was injected; a pod that
already carries it has those items (and only those) removed first, so re-admission
(``reinvocationPolicy: IfNeeded``) yields exactly one of each.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.errors import SidecarError
from sidecar.webhook import a2a_route
from sidecar.webhook.bundles import BUNDLE_SERVER, CONFIGMAP, policy_source, use_bundle_server
from sidecar.webhook.lock import LockRefusal, harden_for_lock, lock_container
from sidecar.webhook.names import (
    CREDENTIAL_VOLUMES,
    EGRESS_LOCK,
    OPA,
    OUR_VOLUMES,
    SIDECAR,
    SPIFFE_DIR,
    SPIFFE_SOCKET,
    STATE_DSN_DIR,
    TELEMETRY_DIR,
    VOL_CONFIG,
    VOL_POLICY,
    VOL_SOCKET,
    VOL_SPIFFE,
    VOL_STATE,
    VOL_STATE_DSN,
    VOL_TELEMETRY,
)
from sidecar.webhook.opa import VOL_OPA, VOL_OPA_SOCKET, opa_container, opa_dir
from sidecar.webhook.probes import probes as _probes
from sidecar.webhook.settings import Resources, WebhookSettings

__all__ = ["AdmissionError", "InjectionResult", "mutate"]

PREFIX = "agent-sidecar.io/"
INJECT = PREFIX + "inject"
ENABLED = "enabled"
DISABLED = "disabled"
STATUS = PREFIX + "status"
ENGINE = PREFIX + "engine"
IDENTITY = PREFIX + "identity-mode"
BUNDLE = PREFIX + "policy-bundle"
MIGRATION = "see 'Migrating from the annotation' in docs/kubernetes.md"

STATUS_VERSION = 2


class AdmissionError(SidecarError):
    """The pod cannot be admitted as it is (an invalid label or annotation): ``allowed: false``."""


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
    try:  # the ConfigMap or a bundle server (sidecar/webhook/bundles.py)
        source = policy_source(annotations, settings) if engine != "opa" else CONFIGMAP
    except ValueError as exc:
        raise AdmissionError(str(exc)) from None
    previous = _previous_status(pod)
    mutated = _strip_previous(copy.deepcopy(pod), previous)
    spec = mutated.setdefault("spec", {})
    _refuse_collisions(spec, engine)
    if settings.egress_lock.enabled:
        try:
            harden_for_lock(spec, settings)
        except LockRefusal as exc:
            raise AdmissionError(str(exc)) from None
    template = settings.sidecar
    containers = spec.setdefault("containers", [])
    # The agent's containers are those it had when first injected; one another webhook adds
    # later (a mesh proxy) is not the agent and gets neither the address nor the socket.
    agents = previous.get("agents", [c.get("name") for c in containers])
    for container in (c for c in containers if c.get("name") in agents):
        _set_env(container, "AGENT_SIDECAR_ADDR", template.agent_address)
        if template.model_front_door_url:
            _set_env(container, "OPENAI_BASE_URL", template.model_front_door_url)
        if template.mcp_url:
            _set_env(container, "AGENT_SIDECAR_MCP_URL", template.mcp_url)
        if template.agent_socket:
            _set_mount(container, {"name": VOL_SOCKET, "mountPath": _socket_dir(settings)})
    ours = [_sidecar(settings, engine, identity)]
    try:  # the pod's A2A port through the inbound listener (sidecar/webhook/a2a_route.py)
        route = a2a_route.route(spec, agents, annotations, template, ours[0])
    except a2a_route.A2aRouteError as exc:
        raise AdmissionError(str(exc)) from None
    if engine == "opa":
        opa_security = _security(settings.opa.run_as_user, settings.sidecar.run_as_user)
        ours.insert(
            0, opa_container(settings, bundle, opa_security, _resources(settings.opa.resources))
        )
    if template.native:
        for container in ours:
            container["restartPolicy"] = "Always"
        init = ours
    else:
        for container in ours:
            container.pop("startupProbe")  # the readiness probe gates traffic instead
        spec["containers"].extend(ours)
        init = []
    if settings.egress_lock.enabled:
        lock = lock_container(
            settings,
            engine,
            _security(settings.sidecar.run_as_user),
            _resources(settings.egress_lock.resources),
        )
        init.insert(0, lock)
    if init:
        spec["initContainers"] = init + spec.get("initContainers", [])
    if template.agent_socket:
        context = spec.setdefault("securityContext", {})
        groups = context.setdefault("supplementalGroups", [])
        if template.socket_group not in groups:
            groups.append(template.socket_group)
    volumes = _volumes(settings, engine, bundle)
    if source == BUNDLE_SERVER:
        use_bundle_server(spec, volumes, settings, bundle)
    spec.setdefault("volumes", []).extend(volumes)
    status = {
        "version": STATUS_VERSION,
        "agents": agents,
        "containers": [] if template.native else [c["name"] for c in ours],
        "init_containers": [c["name"] for c in init],
        "volumes": [v["name"] for v in volumes],
        "engine": engine,
        "identity_mode": identity,
        "policy_bundle": bundle,
    } | ({"policy_source": source} if source == BUNDLE_SERVER else {})
    status |= route  # the A2A port moved to the listener (restored on re-admission)
    meta = mutated.setdefault("metadata", {})
    meta.setdefault("labels", {})[INJECT] = ENABLED
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
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    _validate(annotations, labels, settings)
    if labels.get(INJECT) == DISABLED:
        return "opted out by label agent-sidecar.io/inject=disabled"
    if labels.get(INJECT) != ENABLED and not enrolled_namespace:
        return "not enrolled (no agent-sidecar.io/inject=enabled label, namespace not enrolled)"
    if (pod.get("spec") or {}).get("hostNetwork"):
        raise AdmissionError(
            "a hostNetwork pod cannot get the sidecar (its loopback is the node's, so the "
            "agent API would be too): run it without hostNetwork, or label it "
            f"{INJECT}: {DISABLED} where the namespace allows opting out"
        )
    return None


def _validate(annotations: dict[str, Any], labels: dict[str, Any], settings: WebhookSettings):
    if INJECT in annotations:
        raise AdmissionError(
            f"annotation {INJECT} is no longer read: use the label {INJECT}: "
            f"{ENABLED} or {DISABLED} (the API server filters on labels); {MIGRATION}"
        )
    label = labels.get(INJECT)
    if label is not None and label not in (ENABLED, DISABLED):
        hint = {"true": ENABLED, "false": DISABLED}.get(label)
        fix = f"; it is now {hint!r}, {MIGRATION}" if hint else ""
        raise AdmissionError(f"label {INJECT}: {label!r} is not one of {ENABLED}, {DISABLED}{fix}")
    checks = [
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
            parsed = json.loads(status)
        except (TypeError, ValueError) as exc:
            raise AdmissionError(
                f"{STATUS}: not valid JSON (it is written by the webhook)"
            ) from exc
        lists = ("agents", "containers", "init_containers", "volumes")
        if not isinstance(parsed, dict) or not all(
            isinstance(parsed.get(key, []), list)
            and all(isinstance(item, str) for item in parsed.get(key, []))
            for key in lists
        ):
            raise AdmissionError(
                f"{STATUS}: not the object the webhook writes (remove the annotation)"
            )


def _previous_status(pod: dict[str, Any]) -> dict[str, Any]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return json.loads(annotations.get(STATUS, "{}"))  # validated: a JSON object


def _strip_previous(pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Remove what an earlier injection added: what its status annotation records, only."""
    ours = set(status.get("containers", [])) | set(status.get("init_containers", []))
    volumes = set(status.get("volumes", []))
    spec = pod.get("spec") or {}
    a2a_route.restore(spec, status)
    for key in ("containers", "initContainers"):
        if key not in spec:
            continue
        kept = [c for c in spec[key] if c.get("name") not in ours]
        if kept or key == "containers":
            spec[key] = kept
        else:
            del spec[key]
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in volumes]
    return pod


def _refuse_collisions(spec: dict[str, Any], engine: str) -> None:
    """A container or volume of the pod's own named as one of ours: refused, never replaced."""
    names = {SIDECAR, EGRESS_LOCK} | ({OPA} if engine == "opa" else set())
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container.get("name") in names:
                raise AdmissionError(
                    f"{key}: the pod's own container {container.get('name')!r} has a name "
                    "agent-sidecar injects; rename it (it is never replaced silently)"
                )
    for volume in spec.get("volumes") or []:
        if volume.get("name") in OUR_VOLUMES:
            raise AdmissionError(
                f"volumes: the pod's own volume {volume.get('name')!r} has a name agent-sidecar "
                "injects; rename it (it is never replaced silently)"
            )
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            for mount in container.get("volumeMounts") or []:
                if isinstance(mount, dict) and mount.get("name") in CREDENTIAL_VOLUMES:
                    raise AdmissionError(
                        f"{key}: the pod's own container {container.get('name')!r} mounts "
                        f"{mount.get('name')!r}; only the agent-sidecar container may mount "
                        "the sidecar's credentials"
                    )


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = [e for e in container.get("env", []) if e.get("name") != name]
    env.append({"name": name, "value": value})
    container["env"] = env


def _set_mount(container: dict[str, Any], mount: dict[str, Any]) -> None:
    mounts = [m for m in container.get("volumeMounts", []) if m.get("name") != mount["name"]]
    mounts.append({**mount, "readOnly": True})
    container["volumeMounts"] = mounts


def _socket_dir(settings: WebhookSettings) -> str:
    return settings.sidecar.agent_socket.rsplit("/", 1)[0]


def _resources(r: Resources) -> dict[str, Any]:
    return {
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
        "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
    }


def _security(uid: int, gid: int | None = None) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid if gid is None else gid,
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
        f"server.listen=[{template.agent_address}]",
        "--set",
        f"policy.engine={engine}",
        "--set",
        f"identity.mode={identity}",
        "--set",
        f"identity.socket={SPIFFE_SOCKET}",
    ]
    if template.agent_socket:
        args += ["--set", f"server.socket_group='{template.socket_group}'"]
    if template.model_front_door_url:
        front = urlsplit(template.model_front_door_url)
        args += ["--set", f"frontdoor.listen=127.0.0.1:{front.port}"]
    if template.mcp_url:
        mcp = urlsplit(template.mcp_url)
        args += ["--set", f"mcp.listen=127.0.0.1:{mcp.port}", "--set", f"mcp.path={mcp.path}"]
    if not template.agent_socket or template.model_front_door_url or template.mcp_url:
        # TCP on the pod's loopback: every container of the pod is the agent (docs/identity.md)
        args += ["--set", "identity.pod_tcp=true"]
    if engine == "opa":  # a socket only OPA and the sidecar mount: not the agent's to ask
        args += ["--set", f"policy.opa_url=unix://{settings.opa.socket}"]
    else:
        args += ["--set", "policy.dir=/etc/agent-sidecar/policy"]
    if template.state_secret:  # the fleet's shared state store
        args += ["--set", "state.backend=postgres"]
        args += ["--set", f"state.postgres.dsn_file={STATE_DSN_DIR}/dsn"]
    if template.telemetry_endpoint:  # the fleet's collector (docs/observability.md)
        args += ["--set", f"telemetry.endpoint={template.telemetry_endpoint}"]
        args += ["--set", f"telemetry.protocol={template.telemetry_protocol}"]
    if template.telemetry_headers_secret:
        args += ["--set", f"telemetry.headers_file={TELEMETRY_DIR}/headers"]
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
    if template.agent_socket:
        mounts.append({"name": VOL_SOCKET, "mountPath": _socket_dir(settings)})
    if template.state_secret:
        mounts.append({"name": VOL_STATE_DSN, "mountPath": STATE_DSN_DIR, "readOnly": True})
    if template.telemetry_headers_secret:
        mounts.append({"name": VOL_TELEMETRY, "mountPath": TELEMETRY_DIR, "readOnly": True})
    if engine != "opa":
        mounts.append(
            {"name": VOL_POLICY, "mountPath": "/etc/agent-sidecar/policy", "readOnly": True}
        )
    else:
        mounts.append({"name": VOL_OPA_SOCKET, "mountPath": opa_dir(settings), "readOnly": True})
    if template.health_port:  # the kubelet's probes, answered by the running sidecar
        args += ["--set", f"server.health_listen=0.0.0.0:{template.health_port}"]
    return {
        "name": SIDECAR,
        "image": template.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": SPIFFE_SOCKET}],
        "volumeMounts": mounts,
        **_probes(template),
        "resources": _resources(template.resources),
        "securityContext": _security(template.run_as_user),
    }


def _volumes(settings: WebhookSettings, engine: str, bundle: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": VOL_CONFIG, "configMap": {"name": settings.sidecar.config_map}},
        {"name": VOL_SPIFFE, "csi": {"driver": settings.spiffe_csi_driver, "readOnly": True}},
        {"name": VOL_STATE, "emptyDir": {"sizeLimit": settings.sidecar.state_size_limit}},
    ]
    if settings.sidecar.agent_socket:
        volumes.append({"name": VOL_SOCKET, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    if settings.sidecar.state_secret:
        # 0444: the sidecar runs as its own uid; no other container mounts this volume.
        secret = {"secretName": settings.sidecar.state_secret, "defaultMode": 0o444}
        secret["items"] = [{"key": "dsn", "path": "dsn"}]
        volumes.append({"name": VOL_STATE_DSN, "secret": secret})
    if settings.sidecar.telemetry_headers_secret:  # the collector's key: sidecar only
        secret = {"secretName": settings.sidecar.telemetry_headers_secret, "defaultMode": 0o444}
        secret["items"] = [{"key": "headers", "path": "headers"}]
        volumes.append({"name": VOL_TELEMETRY, "secret": secret})
    if engine == "opa":
        volumes.append({"name": VOL_OPA, "configMap": {"name": settings.opa.config_map}})
        volumes.append(
            {"name": VOL_OPA_SOCKET, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
        )
    else:
        volumes.append(
            {
                "name": VOL_POLICY,
                "configMap": {
                    "name": f"agent-sidecar-policy-{bundle}",
                    "items": [
                        {"key": "authz.rego", "path": "agentsidecar/authz/authz.rego"},
                        {"key": "mcp.rego", "path": "agentsidecar/authz/mcp.rego"},
                        {"key": "a2a.rego", "path": "agentsidecar/authz/a2a.rego"},
                        {"key": "data.json", "path": "agentsidecar/data.json"},
                    ],
                },
            }
        )
    return volumes
