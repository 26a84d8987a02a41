"""The egress lock's part of injection: the pod's lock container, and agents it can protect.

The lock lets the sidecar's uid (and OPA's, and each explicit allow's) out of the pod, by uid,
in the kernel. It cannot protect a pod whose other containers could become one of those uids
or bypass the IP stack, so with the lock on every container of the pod that is not ours is
checked, and fixed where a fix cannot break it:

* refused: ``privileged``; adding a capability that undoes the lock (``NET_ADMIN`` rewrites
  the rules, ``NET_RAW`` sends packet-socket frames past them, ``SETUID`` becomes the
  sidecar's uid, ``SYS_ADMIN``/``SYS_PTRACE``/``BPF``/``SYS_MODULE``/``ALL``); an explicit
  ``allowPrivilegeEscalation: true``; no ``runAsUser`` on the container or the pod (the
  image's ``USER`` would decide, and could be the sidecar's uid: a distroless ``:nonroot``
  image is 65532); a ``runAsUser`` the lock lets out (only the container named for it may);
* refused with ``dns: resolvers``: ``dnsPolicy: None`` or ``dnsConfig.nameservers`` (the
  lock lets port 53 out to the configured cluster DNS only, never to what the pod names);
* fixed: ``allowPrivilegeEscalation: false`` set, and ``NET_RAW``, ``SETUID``, ``SETGID``
  dropped (a root container holds them by default: a root agent could ``setuid(65532)``).

Who installs the rules (``egress_lock.mode``): ``node``, the node agent, with an unprivileged
``egress-lock verify`` as the pod's first init container (Pod Security ``restricted``); or
``init``, a root init container with ``NET_ADMIN`` (``privileged`` only).
"""

from __future__ import annotations

from typing import Any

from sidecar.egress_lock import Allow
from sidecar.errors import SidecarError
from sidecar.webhook.settings import WebhookSettings

__all__ = [
    "BREAKING_CAPS",
    "FORCED_DROPS",
    "LockRefusal",
    "admission_params",
    "harden_for_lock",
    "lock_container",
    "lock_uids",
    "node_agent_args",
    "rule_args",
]

BREAKING_CAPS = frozenset(
    {"ALL", "NET_ADMIN", "NET_RAW", "SETUID", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "BPF"}
)
FORCED_DROPS = ("NET_RAW", "SETUID", "SETGID")
DOCS = "see 'Egress lock' in docs/kubernetes.md"


class LockRefusal(SidecarError):
    """A container the egress lock cannot protect against (becomes an AdmissionError)."""


def lock_uids(settings: WebhookSettings) -> dict[int, str]:
    """Every uid the lock lets out, and the one container name allowed to run as it."""
    uids = {settings.sidecar.run_as_user: "agent-sidecar", settings.opa.run_as_user: "opa"}
    for allow in settings.egress_lock.allow:
        for uid in allow.uids:
            uids[uid] = allow.container
    return uids


def rule_args(settings: WebhookSettings, *, opa: bool = True) -> list[str]:
    """The ``egress-lock`` options for these settings (init container and node agent alike):
    the sidecar's uid anywhere; OPA's only to its bundle service (``opa.egress_cidrs``); the
    explicit allows; DNS to the configured servers, never the pod's resolv.conf."""
    args = ["--allow-uid", str(settings.sidecar.run_as_user)]
    for allow in _allows(settings, opa=opa):
        args += ["--allow", allow.to_arg()]
    for server in settings.egress_lock.dns_servers:
        args += ["--dns-server", server]
    return args


def _allows(settings: WebhookSettings, *, opa: bool = True) -> list[Allow]:
    egress = settings.opa.egress() if opa else None
    return ([egress] if egress else []) + [a.rule() for a in settings.egress_lock.allow]


def node_agent_args(settings: WebhookSettings) -> list[str]:
    """The node agent DaemonSet's arguments (k8s/base/egress-lock-node; a test compares)."""
    return ["egress-lock", "node-agent", *rule_args(settings)]


def admission_params(settings: WebhookSettings) -> dict[str, str]:
    """The lock's keys of the ConfigMap agent-sidecar-admission: how the lock container is
    injected (mode, DNS and ``dns_server_N``, OPA's and each allow as its argument) and
    ``lock_uid_N: CONTAINER``."""
    lock = settings.egress_lock
    params = {"egress_lock_mode": lock.mode, "egress_lock_dns": lock.dns}
    egress = settings.opa.egress()
    if egress:
        params["lock_allow_opa"] = egress.to_arg()
    for i, allow in enumerate(lock.allow):
        params[f"lock_allow_{i}"] = allow.rule().to_arg()
    for i, server in enumerate(lock.dns_servers):
        params[f"dns_server_{i}"] = server
    for uid, name in sorted(lock_uids(settings).items()):
        params[f"lock_uid_{uid}"] = name
    return params


def lock_container(
    settings: WebhookSettings, engine: str, security: dict[str, Any], resources: dict[str, Any]
) -> dict[str, Any]:
    """The pod's first init container: verify (mode node) or install (mode init)."""
    lock = settings.egress_lock
    container: dict[str, Any] = {
        "name": "agent-sidecar-egress-lock",
        "image": settings.sidecar.image,
        "imagePullPolicy": "IfNotPresent",
    }
    if lock.mode == "node":
        # Unprivileged, as the sidecar: it only watches for the node agent's rules.
        container["args"] = ["egress-lock", "verify", "--timeout", str(lock.verify_timeout_seconds)]
        container["resources"] = resources
        container["securityContext"] = security
        return container
    container["args"] = ["egress-lock", *rule_args(settings, opa=engine == "opa")]
    container["resources"] = resources
    # Root with NET_ADMIN only, for the moment it takes to load the rules (Pod Security:
    # privileged level; baseline forbids NET_ADMIN, restricted also root).
    container["securityContext"] = {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return container


def _cap(name: Any) -> str:
    return str(name).upper().removeprefix("CAP_")


def _uid(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LockRefusal(f"{where}: runAsUser {value!r} is not an integer")
    return value


def harden_for_lock(spec: dict[str, Any], settings: WebhookSettings) -> None:
    """Refuse (``LockRefusal``) or fix, in place, every container of ``spec`` (the pod's own:
    called before ours are added)."""
    pod_context = spec.get("securityContext") or {}
    if not isinstance(pod_context, dict):
        raise LockRefusal("spec.securityContext: not an object")
    pod_uid = _uid(pod_context.get("runAsUser"), "spec.securityContext")
    if settings.egress_lock.dns == "resolvers":
        _refuse_own_nameservers(spec)
    allowed = lock_uids(settings)
    # The sidecar's and OPA's uids: no container of the user's may run as them, whatever its
    # name (ours are added after this check).
    reserved = {settings.sidecar.run_as_user, settings.opa.run_as_user}
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            where = f"{key} {container.get('name')!r}"
            _harden(container, where, pod_uid, allowed, reserved)


def _refuse_own_nameservers(spec: dict[str, Any]) -> None:
    """DNS is let out to the configured cluster DNS only: a pod pointing its resolver
    elsewhere would only fail, and must not look like it could widen the lock."""
    dns_config = spec.get("dnsConfig") or {}
    if not isinstance(dns_config, dict):
        raise LockRefusal("spec.dnsConfig: not an object")
    if spec.get("dnsPolicy") == "None" or dns_config.get("nameservers"):
        raise LockRefusal(
            "spec.dnsPolicy None / spec.dnsConfig.nameservers: with the egress lock's DNS "
            "(dns: resolvers) the pod resolves through the cluster DNS only (the lock lets "
            f"port 53 out to it alone): remove them; {DOCS}"
        )


def _harden(
    container: dict[str, Any],
    where: str,
    pod_uid: int | None,
    allowed: dict[int, str],
    reserved: set[int],
) -> None:
    context = container.get("securityContext") or {}
    if not isinstance(context, dict):
        raise LockRefusal(f"{where}: securityContext is not an object")
    capabilities = context.get("capabilities") or {}
    if not isinstance(capabilities, dict) or not all(
        isinstance(capabilities.get(k) or [], list) for k in ("add", "drop")
    ):
        raise LockRefusal(f"{where}: capabilities must be lists (add, drop)")
    why = "with the egress lock on, it could get around the lock"
    if context.get("privileged") is True:
        raise LockRefusal(f"{where}: privileged: {why}; {DOCS}")
    added = sorted({_cap(c) for c in capabilities.get("add") or []} & BREAKING_CAPS)
    if added:
        raise LockRefusal(f"{where}: adds {', '.join(added)}: {why}; remove it ({DOCS})")
    if context.get("allowPrivilegeEscalation") is True:
        raise LockRefusal(
            f"{where}: allowPrivilegeEscalation: true (a setuid or file-capability binary "
            f"could gain what the lock needs it not to have): {why}; {DOCS}"
        )
    uid = _uid(context.get("runAsUser"), where)
    uid = pod_uid if uid is None else uid
    if uid is None:
        raise LockRefusal(
            f"{where}: set runAsUser (on the container or the pod): without it the image's "
            f"USER decides, and could be a uid the egress lock lets out; {DOCS}"
        )
    if uid in allowed and (allowed[uid] != container.get("name") or uid in reserved):
        owner = allowed[uid] or "no container"
        raise LockRefusal(
            f"{where}: runs as uid {uid}, which the egress lock lets out (reserved for "
            f"{owner}): run it as another uid; {DOCS}"
        )
    context["allowPrivilegeEscalation"] = False
    drop = list(capabilities.get("drop") or [])
    dropped = {_cap(c) for c in drop}
    if "ALL" not in dropped:
        drop += [c for c in FORCED_DROPS if c not in dropped]
    capabilities["drop"] = drop
    context["capabilities"] = capabilities
    container["securityContext"] = context
