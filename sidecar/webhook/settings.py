"""Webhook configuration: the injection template and allow-lists, validated once at start.

Loaded with the same strict loader as the sidecar's config (unknown keys and wrong types are
errors naming the file and key), and swapped atomically when the file changes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from sidecar.egress_lock import Allow, EgressLockError, EgressRules
from sidecar.telemetry.settings import TelemetrySettings
from sidecar.typed_config import ConfigError, KeyedError, convert

__all__ = [
    "BundleServerTemplate",
    "EgressAllow",
    "EgressLockTemplate",
    "OpaTemplate",
    "Resources",
    "SidecarTemplate",
    "WebhookSettings",
    "load_webhook_settings",
]


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class SidecarResources(Resources):
    """The injected sidecar, sized from its measured footprint (docs/performance.md): ~95 MB
    resident idle and ~98 MB after 20k calls with the shipped config, one process; a policy
    load or reload adds OPA's compiler as a short-lived child (~55 MB) and a second compiled
    revision for a moment, hence the limit."""

    memory_request: str = "128Mi"


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _check_telemetry(template: SidecarTemplate) -> None:
    """The fleet's collector, checked as the sidecar will check it (TelemetrySettings)."""
    if template.telemetry_headers_secret and not template.telemetry_endpoint:
        raise ValueError("telemetry_headers_secret: set, but telemetry_endpoint is empty")
    if template.telemetry_headers_secret and not _K8S_NAME.fullmatch(
        template.telemetry_headers_secret
    ):
        raise ValueError("telemetry_headers_secret: not a Kubernetes object name")
    if template.telemetry_endpoint:
        try:
            TelemetrySettings(
                endpoint=template.telemetry_endpoint, protocol=template.telemetry_protocol
            )
        except ValueError as exc:
            raise ValueError(f"telemetry_{exc}") from None


@dataclass(frozen=True)
class SidecarTemplate:
    image: str = "ghcr.io/agent-sidecar/agent-sidecar:0.1.0"
    config_map: str = "agent-sidecar-config"
    # The agent API as agent containers reach it: a unix socket on a volume shared with them
    # (only containers that mount it and carry socket_group can call), or 127.0.0.1:PORT (then
    # every container of the pod is the agent: identity.pod_tcp, docs/identity.md).
    agent_address: str = "unix:///run/agent-sidecar/agent.sock"
    # The socket's group, added to the pod's supplementalGroups (agents need it to connect).
    socket_group: int = 65531
    run_as_user: int = 65532
    resources: SidecarResources = field(default_factory=SidecarResources)
    # When set (http://127.0.0.1:PORT/v1), the sidecar serves its model front door there and
    # agents get OPENAI_BASE_URL pointing to it.
    model_front_door_url: str = ""
    # When set (http://127.0.0.1:PORT/mcp), the sidecar serves its MCP endpoint there and
    # agents get AGENT_SIDECAR_MCP_URL pointing to it (MCP clients speak HTTP, not sockets).
    mcp_url: str = ""
    # A native sidecar (init container, restartPolicy Always; Kubernetes >= 1.29). false: an
    # ordinary container, for older clusters (it then neither starts first nor lets Jobs end).
    native: bool = True
    # How long the sidecar (and OPA) may take to become ready before the kubelet restarts it.
    startup_seconds: int = 120
    # The sidecar's probe port (server.health_listen: gRPC Health/Check only, on the pod's
    # IP): the kubelet's native grpc probes ask the running sidecar, for nothing per period.
    # 0: exec probes (`agent-sidecar health` inside the container, ~60 MB each time).
    health_port: int = 7445
    # The size limit of the sidecar's state volume (emptyDir: audit log, SQLite state): past
    # it the kubelet evicts the pod rather than let it fill the node's disk.
    state_size_limit: str = "256Mi"
    # A Secret in the pod's namespace whose key `dsn` holds the PostgreSQL DSN: the injected
    # sidecars then share one state store (state.backend postgres; docs/kubernetes.md). Only
    # the sidecar container mounts it.
    state_secret: str = ""
    # Fleet-wide OTLP export (docs/observability.md): every injected sidecar pushes its spans
    # and metrics to this collector (``telemetry.endpoint``; empty: the ConfigMap decides).
    telemetry_endpoint: str = ""
    telemetry_protocol: Literal["grpc", "http"] = "grpc"
    # A Secret in the pod's namespace whose key `headers` holds the collector's headers
    # (``Name: value`` lines): mounted read-only into the sidecar container only.
    telemetry_headers_secret: str = ""
    # The sidecar's inbound A2A listener port, used when a pod's annotation
    # agent-sidecar.io/a2a-port routes its A2A port through it (sidecar/webhook/a2a_route.py).
    a2a_inbound_port: int = 8443

    def __post_init__(self) -> None:
        _check_telemetry(self)
        if not 0 < self.a2a_inbound_port < 65536 or self.a2a_inbound_port == self.health_port:
            raise ValueError("a2a_inbound_port: a port other than health_port")
        address = self.agent_address
        if address.startswith("unix:"):
            if not address.startswith("unix:///") or address.endswith("/"):
                raise ValueError("agent_address: a unix socket is unix:///ABSOLUTE/PATH")
        else:
            host, _, port = address.rpartition(":")
            if host not in ("127.0.0.1", "localhost") or not port.isdigit():
                raise ValueError(
                    "agent_address: must be unix:///PATH or 127.0.0.1:PORT (the pod's loopback)"
                )
        if not 0 < self.socket_group < 2**32 - 1:
            raise ValueError("socket_group: must be a gid > 0")
        if self.state_secret and not re.fullmatch(
            r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", self.state_secret
        ):
            raise ValueError("state_secret: not a Kubernetes object name")
        if not 0 <= self.health_port < 65536:
            raise ValueError("health_port: a port, or 0 for exec probes")
        if self.startup_seconds < 1:
            raise ValueError("startup_seconds: must be >= 1")
        if not re.fullmatch(r"[1-9][0-9]{0,8}(Ki|Mi|Gi|Ti|k|M|G|T)?", self.state_size_limit):
            raise ValueError(
                "state_size_limit: a Kubernetes quantity such as 256Mi or 1Gi (never unlimited)"
            )
        if self.model_front_door_url:
            parts = urlsplit(self.model_front_door_url)
            if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
                raise ValueError(
                    "model_front_door_url: must be http://127.0.0.1:PORT/v1 (the front door "
                    "listens on the pod's loopback only)"
                )
            if parts.port is None:
                raise ValueError("model_front_door_url: needs an explicit port")
        if self.mcp_url:
            parts = urlsplit(self.mcp_url)
            if (
                parts.scheme != "http"
                or parts.hostname not in ("127.0.0.1", "localhost")
                or parts.port is None
                or not parts.path.startswith("/")
            ):
                raise ValueError(
                    "mcp_url: must be http://127.0.0.1:PORT/PATH (the MCP endpoint listens on "
                    "the pod's loopback only)"
                )

    @property
    def agent_socket(self) -> str:
        """The socket's path when the agent API is a unix socket, else ''."""
        return (
            self.agent_address.removeprefix("unix://")
            if self.agent_address.startswith("unix:")
            else ""
        )


@dataclass(frozen=True)
class LockResources(Resources):
    """A one-shot nft call needs little."""

    cpu_request: str = "10m"
    memory_request: str = "16Mi"
    cpu_limit: str = "100m"
    memory_limit: str = "64Mi"


@dataclass(frozen=True)
class EgressAllow:
    """One explicit way out besides the sidecar's (a mesh proxy, a non-HTTP dependency)."""

    # Where to: at least one CIDR (address/prefix).
    cidrs: tuple[str, ...]
    # TCP and UDP ports; none: every port.
    ports: tuple[int, ...] = ()
    # Whose connections: these uids (a mesh proxy's: Istio 1337, Linkerd 2102); none: every
    # process in the pod, the agent's included.
    uids: tuple[int, ...] = ()
    # The container allowed to run as those uids (the mesh's proxy, which another webhook
    # adds); any other container running as one of them is refused.
    container: str = ""

    def __post_init__(self) -> None:
        try:
            self.rule()
        except EgressLockError as exc:
            raise ValueError(f"cidrs: {exc}") from None
        if self.container and not self.uids:
            raise ValueError("container: names the container that runs as `uids`: give them")
        if self.uids and not self.container:
            raise ValueError(
                "container: name the one container (the mesh's proxy) that runs as these uids"
            )

    def rule(self) -> Allow:
        return Allow(self.cidrs, self.ports, self.uids)


@dataclass(frozen=True)
class EgressLockTemplate:
    """Only the sidecar's processes may open connections leaving the pod (docs/kubernetes.md)."""

    enabled: bool = False
    # node: the node agent (DaemonSet, privileged namespace) installs the rules; each pod gets
    # an unprivileged init container that holds it until they are in force (Pod Security
    # restricted). init: a root init container with NET_ADMIN installs them (privileged only).
    mode: Literal["node", "init"] = "node"
    # none: the agent resolves no names (it needs none: the sidecar is on its loopback).
    # resolvers: every process may reach dns_servers on port 53 (an exfiltration channel,
    # chosen knowingly). Never the pod's own resolv.conf, which the pod chooses (dnsConfig).
    dns: Literal["none", "resolvers"] = "none"
    # The cluster DNS (kube-dns's ClusterIP), required with dns: resolvers.
    dns_servers: tuple[str, ...] = ()
    # Explicit ways out besides the sidecar's.
    allow: tuple[EgressAllow, ...] = ()
    # How long the pod's verify container waits for the node agent (mode node).
    verify_timeout_seconds: int = 120
    resources: LockResources = field(default_factory=LockResources)

    def __post_init__(self) -> None:
        if self.verify_timeout_seconds < 1:
            raise ValueError("verify_timeout_seconds: must be >= 1")
        if self.dns == "resolvers" and not self.dns_servers:
            raise ValueError(
                "dns_servers: dns: resolvers needs the cluster DNS address (kube-dns's "
                "ClusterIP); the pod's own resolv.conf is never trusted"
            )
        if self.dns == "none" and self.dns_servers:
            raise ValueError("dns_servers: only with dns: resolvers")
        try:
            EgressRules((0,), self.dns_servers)
        except EgressLockError as exc:
            raise ValueError(f"dns_servers: {exc}") from None


@dataclass(frozen=True)
class OpaTemplate:
    image: str = "openpolicyagent/opa:1.4.2-static"
    config_map: str = "agent-sidecar-opa-config"
    # OPA's own uid: the egress lock lets it out to egress_cidrs/egress_ports only (its
    # bundle service), so no agent may use it.
    run_as_user: int = 65533
    # Where OPA's uid may go with the egress lock on: the bundle service and the DNS that
    # resolves its name (the cluster's service CIDR), on these ports. None: nowhere.
    egress_cidrs: tuple[str, ...] = ()
    egress_ports: tuple[int, ...] = (53, 80, 443)
    # OPA listens on a unix socket in a volume only it and the sidecar mount (never on the
    # pod's loopback, where the agent could query it or make it http.send anywhere).
    socket: str = "/run/opa/opa.sock"
    resources: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        if self.egress_cidrs:
            try:
                self.egress()
            except EgressLockError as exc:
                raise ValueError(f"egress_cidrs: {exc}") from None
        parts = self.socket.split("/")[1:]
        if not re.fullmatch(r"(/[A-Za-z0-9._-]+){2,}", self.socket) or {".", ".."} & set(parts):
            raise ValueError("socket: an absolute path /DIR/NAME (letters, digits, ._-)")

    def egress(self) -> Allow | None:
        """OPA's way out under the egress lock, or None."""
        if not self.egress_cidrs:
            return None
        return Allow(self.egress_cidrs, self.egress_ports, (self.run_as_user,))


_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


def _placeholders(resource: str) -> None:
    """Refuse, at load, what ``resource.format(bundle=...)`` would fail on at admission: any
    placeholder but a plain ``{bundle}`` (no conversion or format spec) or a stray brace."""
    try:
        fields = [(f, c, s) for _, f, s, c in string.Formatter().parse(resource) if f is not None]
    except ValueError:
        raise ValueError("resource: unbalanced { or } (write {{ or }} for a brace)") from None
    for name, conversion, spec in fields:
        if name != "bundle" or conversion or spec:
            raise ValueError(
                f"resource: {{{name}}} is not a placeholder; only {{bundle}} is (write {{{{ "
                "or }} for a brace)"
            )


@dataclass(frozen=True)
class BundleServerTemplate:
    """Where injected sidecars download their policy bundle, and how they authenticate it."""

    # The bundle service's base URL (policy.bundle.services.bundles.url); empty: off.
    url: str = ""
    # The bundle's path on it; {bundle} is the pod's agent-sidecar.io/policy-bundle.
    resource: str = "bundles/{bundle}.tar.gz"
    # Pods without an agent-sidecar.io/policy-source annotation use the bundle server.
    default: bool = False
    # Every pod of the embedded engine must: `configmap` is refused (an admission error), so
    # no pod opts out of the (signed) bundles; the admission policy refuses a policy.dir too
    # (admission param bundle_server_required). Implies default.
    required: bool = False
    # A Secret (pod's namespace) whose key `token` is the bearer token: sidecar only.
    token_secret: str = ""
    # A ConfigMap whose key `ca.crt` is the CA of the bundle server's certificate.
    ca_config_map: str = ""
    # A ConfigMap whose key `key.pem` is the public key bundles must be signed with
    # (unset: bundles are not required to be signed; set it in production).
    signing_key_config_map: str = ""
    signing_algorithm: str = "RS256"
    min_delay_seconds: int = 10
    max_delay_seconds: int = 30
    # Also report status and send decision logs (OPA's formats) to the same service.
    status: bool = False
    decision_logs: bool = False

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url: {self.url!r} is not an http(s) URL")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError("url: no credentials, query or fragment in the URL")
        if self.default and not self.url:
            raise ValueError("default: needs url")
        if self.required and not self.url:
            raise ValueError("required: needs url")
        if not self.resource or ".." in self.resource.split("/") or "{bundle}" not in self.resource:
            raise ValueError("resource: a path holding {bundle}, without '..'")
        _placeholders(self.resource)
        for name in ("token_secret", "ca_config_map", "signing_key_config_map"):
            value = getattr(self, name)
            if value and not _K8S_NAME.fullmatch(value):
                raise ValueError(f"{name}: not a Kubernetes object name")
        if self.signing_algorithm not in _ALGORITHMS:
            raise ValueError(f"signing_algorithm: not one of {', '.join(_ALGORITHMS)}")
        if not 1 <= self.min_delay_seconds <= self.max_delay_seconds:
            raise ValueError("min_delay_seconds: must be >= 1 and <= max_delay_seconds")


@dataclass(frozen=True)
class WebhookSettings:
    """What the webhook injects, and which per-pod choices it accepts."""

    # The webhook's own namespace: never injected.
    namespace: str = "agent-sidecar-system"
    skip_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    sidecar: SidecarTemplate = field(default_factory=SidecarTemplate)
    opa: OpaTemplate = field(default_factory=OpaTemplate)
    egress_lock: EgressLockTemplate = field(default_factory=EgressLockTemplate)
    spiffe_csi_driver: str = "csi.spiffe.io"
    default_engine: str = "embedded"
    default_identity_mode: str = "pod"
    allowed_engines: tuple[str, ...] = ("embedded", "opa")
    allowed_identity_modes: tuple[str, ...] = ("pod", "jwt", "mtls")
    # Policy bundles a pod may choose (agent-sidecar.io/policy-bundle); the first is the default.
    allowed_policy_bundles: tuple[str, ...] = ("agentsidecar",)
    # An OPA bundle server pods may take their policy from (agent-sidecar.io/policy-source).
    bundle_server: BundleServerTemplate = field(default_factory=BundleServerTemplate)
    max_request_bytes: int = 1024 * 1024
    # A TLS handshake, the request's headers and its body must each arrive within this.
    read_timeout_s: float = 10.0
    # Connections served at once; more are closed at accept (the API server retries).
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.read_timeout_s <= 0:
            raise ValueError("read_timeout_s: must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections: must be >= 1")
        if self.default_engine not in self.allowed_engines:
            raise ValueError("default_engine: not in allowed_engines")
        if self.default_identity_mode not in self.allowed_identity_modes:
            raise ValueError("default_identity_mode: not in allowed_identity_modes")
        if not self.allowed_policy_bundles:
            raise ValueError("allowed_policy_bundles: at least one bundle is required")
        ours = {self.sidecar.run_as_user, self.opa.run_as_user}
        if len(ours) != 2:
            raise ValueError("opa: run_as_user must differ from sidecar.run_as_user")
        owners: dict[int, str] = {}
        for allow in self.egress_lock.allow:
            for uid in allow.uids:
                if uid in ours or owners.get(uid, allow.container) != allow.container:
                    raise ValueError(
                        f"egress_lock: uid {uid} in allow is the sidecar's, OPA's or another "
                        "container's: one container per uid"
                    )
                owners[uid] = allow.container


def load_webhook_settings(path: str | Path) -> WebhookSettings:
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read webhook config: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the webhook config must be a mapping")
    try:
        return convert(WebhookSettings, raw, "", path.parent)
    except KeyedError as exc:
        raise ConfigError(f"{path}: {exc.key}: {exc}") from None
