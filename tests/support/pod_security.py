"""Pod Security Standards (``baseline``, ``restricted``), checked the way the API server's
PodSecurity admission does for a Pod, since no API server runs here.

Rules as published for Kubernetes 1.32 (kubernetes.io/docs/concepts/security/pod-security-
standards, policy version ``latest``); each failure names the rule and the field. Init,
ephemeral and ordinary containers are all checked, as PodSecurity does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEVELS", "violations"]

LEVELS = ("privileged", "baseline", "restricted")
BASELINE_CAPS = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
SAFE_SYSCTLS = frozenset(
    [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ]
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUMES = frozenset(
    [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ]
)


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{key}[{c.get('name')}]", c)
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]


def violations(pod: dict[str, Any], level: str) -> list[str]:
    """What in ``pod`` (a Pod object) the ``level`` forbids; empty: the pod is admitted."""
    assert level in LEVELS, level
    if level == "privileged":
        return []
    found = _baseline(pod)
    if level == "restricted":
        found += _restricted(pod["spec"])
    return found


def _baseline(pod: dict[str, Any]) -> list[str]:
    spec = pod["spec"]
    pod_ctx = spec.get("securityContext") or {}
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"host namespaces: spec.{field}")
    contexts = [("spec.securityContext", pod_ctx)] + [
        (f"{where}.securityContext", c.get("securityContext") or {})
        for where, c in _containers(spec)
    ]
    for where, ctx in contexts:
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}.windowsOptions.hostProcess")
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or "user" in selinux or "role" in selinux:
            found.append(f"SELinux: {where}.seLinuxOptions")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where}.seccompProfile.type Unconfined")
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            found.append(f"AppArmor: {where}.appArmorProfile.type Unconfined")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl.get('name')}")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"HostPath volumes: {volume.get('name')}")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {key}")
    for where, c in _containers(spec):
        ctx = c.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"Privileged containers: {where}")
        added = set((ctx.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPS:
            found.append(f"Capabilities: {where} adds {sorted(added - BASELINE_CAPS)}")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"/proc Mount Type: {where}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"HostPorts: {where}")
    return found


def _restricted(spec: dict[str, Any]) -> list[str]:
    pod_ctx = spec.get("securityContext") or {}
    found = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"Volume Types: {volume.get('name')} is {sorted(kinds)}")
    if pod_ctx.get("runAsUser") == 0:
        found.append("Running as Non-root user: spec.securityContext.runAsUser 0")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    for where, c in _containers(spec):
        ctx = c.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege Escalation: {where} must set allowPrivilegeEscalation false")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"Running as Non-root: {where} (runAsNonRoot must be true)")
        if ctx.get("runAsUser") == 0:
            found.append(f"Running as Non-root user: {where} runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"Seccomp: {where} needs RuntimeDefault or Localhost")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"Capabilities: {where} must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: {where} may add only NET_BIND_SERVICE")
    return found
