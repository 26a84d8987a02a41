"""YAML configuration -> frozen, typed settings, validated once before anything listens.

This module only reads the file, assembles the sections and checks what spans them. Each
section's dataclass, with its defaults and the validation of its own values, lives beside the
package it configures (``sidecar/policy/settings.py``, ``sidecar/server_settings.py`` ...;
``docs/configuration.md`` lists them all). Loading is strict (``sidecar.typed_config``): an
unknown key, a wrong type, a bad value or a missing file raises :class:`ConfigError` naming
the file and the dotted key. Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.a2a.settings import PEER_NAME_RE, A2aPeerSettings, A2aSettings
from sidecar.a2a_inbound_settings import InboundSettings
from sidecar.approvals.settings import ApprovalSettings
from sidecar.audit.settings import AuditSettings
from sidecar.authzen.settings import AuthZenSettings
from sidecar.budgets_settings import BudgetSettings
from sidecar.console.settings import ConsoleSettings
from sidecar.frontdoor_settings import FrontDoorSettings
from sidecar.identity.settings import DelegationSettings, IdentitySettings
from sidecar.mcp.settings import SERVER_NAME_RE, McpServerSettings, McpSettings
from sidecar.metrics_settings import AdminSettings
from sidecar.overrides import OverrideError, apply_overrides
from sidecar.policy.settings import PolicySettings
from sidecar.relay.settings import (
    FORMAT_APIS,
    ModelSettings,
    ProviderSettings,
    RelaySettings,
    TargetAuthSettings,
    TargetSettings,
    ToolSettings,
)
from sidecar.server_settings import DEFAULT_AGENT_SOCKET, MAX_WORKERS, ServerSettings
from sidecar.state.settings import StateSettings
from sidecar.tasks_settings import TaskSettings
from sidecar.telemetry.settings import TelemetrySettings
from sidecar.typed_config import ConfigError, KeyedError, convert
from sidecar.users.settings import IssuerSettings, UserSettings
from sidecar.validate import MIB, SPIFFE_ID_RE, is_local_address

# The sections are re-exported here: ``from sidecar.config import PolicySettings`` keeps
# working, and ``_KeyedError``/``_convert`` are the converter's old names (tests/k8s use them).
__all__ = [
    "DEFAULT_AGENT_SOCKET",
    "MIB",
    "SPIFFE_ID_RE",
    "A2aPeerSettings",
    "A2aSettings",
    "AdminSettings",
    "ApprovalSettings",
    "AuditSettings",
    "AuthZenSettings",
    "BudgetSettings",
    "ConfigError",
    "ConsoleSettings",
    "DelegationSettings",
    "FrontDoorSettings",
    "IdentitySettings",
    "InboundSettings",
    "IssuerSettings",
    "McpServerSettings",
    "McpSettings",
    "ModelSettings",
    "PolicySettings",
    "ProviderSettings",
    "RelaySettings",
    "ServerSettings",
    "Settings",
    "StateSettings",
    "TargetAuthSettings",
    "TargetSettings",
    "TaskSettings",
    "ToolSettings",
    "UserSettings",
    "is_local_address",
    "load_settings",
    "parse_settings",
]

_KeyedError = KeyedError
_convert = convert


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Build it with :func:`load_settings`."""

    identity: IdentitySettings
    server: ServerSettings = field(default_factory=ServerSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    state: StateSettings = field(default_factory=StateSettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    delegation: DelegationSettings = field(default_factory=DelegationSettings)
    targets: Mapping[str, TargetSettings] = field(default_factory=dict)
    tools: Mapping[str, ToolSettings] = field(default_factory=dict)
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)
    frontdoor: FrontDoorSettings = field(default_factory=FrontDoorSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    users: UserSettings = field(default_factory=UserSettings)
    authzen: AuthZenSettings = field(default_factory=AuthZenSettings)
    mcp: McpSettings = field(default_factory=McpSettings)
    mcp_servers: Mapping[str, McpServerSettings] = field(default_factory=dict)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    a2a_inbound: InboundSettings = field(default_factory=InboundSettings)
    a2a: A2aSettings = field(default_factory=A2aSettings)
    a2a_peers: Mapping[str, A2aPeerSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mcp_tcp = self.mcp.listen and not self.mcp.listen.startswith("unix:")
        if self.identity.mode == "pod" and not self.identity.pod_tcp:
            tcp = [a for a in self.server.listen if not a.startswith("unix:")]
            if tcp or self.frontdoor.listen or mcp_tcp:
                key = "server.listen" if tcp else "frontdoor.listen"
                if not tcp and not self.frontdoor.listen:
                    key = "mcp.listen"
                address = (tcp or [self.frontdoor.listen or self.mcp.listen])[0]
                raise KeyedError(
                    key,
                    f"{address!r} is TCP: in identity mode pod every "
                    "process that can reach it would be the pod's agent (in Kubernetes, every "
                    "container of the pod). Use a unix socket, or opt in with identity.pod_tcp: "
                    "true (docs/identity.md says what that trusts)",
                )
        if self.identity.mode != "mtls":
            for address in self.server.listen:
                if not is_local_address(address):
                    raise KeyedError(
                        "server.listen",
                        f"{address!r} is not a loopback address or unix socket; with identity "
                        f"mode {self.identity.mode} the agent API must not be reachable from "
                        "outside the pod (only mode mtls may listen on other addresses)",
                    )
        if self.server.workers != "auto" and self.server.workers > 1 and not self.shares_tcp:
            raise KeyedError(
                "server.workers",
                f"{self.server.workers} workers need a TCP listener to share (server.listen "
                "HOST:PORT or frontdoor.listen): a unix socket is served by one process only",
            )
        if self.approvals.listen and self.approvals.listen in self.server.listen:
            raise KeyedError(
                "approvals.listen",
                "must not be an agent API address (server.listen): agents must not reach the "
                "approvals API",
            )
        for i, name in enumerate(self.policy.fail_open_on_engine_error):
            tool = self.tools.get(name)
            if tool is None or tool.operation != "read":
                raise KeyedError(
                    f"policy.fail_open_on_engine_error[{i}]",
                    f"{name!r} is not a configured read tool; only read tools may fail open",
                )
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise KeyedError(
                    f"models.{name}.provider",
                    f"{model.provider!r} is not a configured provider (providers: "
                    f"{', '.join(sorted(self.providers)) or 'none'})",
                )
            kind = self.providers[model.provider].type
            for api in model.apis:
                if api not in FORMAT_APIS[kind]:
                    raise KeyedError(
                        f"models.{name}.apis",
                        f"{api!r} is not served by {kind}-format provider {model.provider!r} "
                        f"(it serves {', '.join(sorted(FORMAT_APIS[kind]))})",
                    )
        if self.frontdoor.listen and self.identity.mode == "mtls":
            raise KeyedError(
                "frontdoor.listen",
                "the front door is plain HTTP on loopback and cannot attest an mTLS caller; "
                "use identity mode pod or jwt (the SDK's api key carries the JWT-SVID)",
            )
        self._check_mcp()
        self._check_a2a_inbound()
        self._check_a2a()
        for name, tool in self.tools.items():
            if tool.target not in self.targets:
                raise KeyedError(
                    f"tools.{name}.target",
                    f"{tool.target!r} is not a configured target (targets: "
                    f"{', '.join(sorted(self.targets)) or 'none'})",
                )

    def _check_mcp(self) -> None:
        if self.mcp.listen:
            if not is_local_address(self.mcp.listen):
                raise KeyedError(
                    "mcp.listen",
                    f"{self.mcp.listen!r} is not a loopback HOST:PORT or unix socket (the MCP "
                    "endpoint is unencrypted HTTP for the agent in the same pod)",
                )
            if self.identity.mode == "mtls":
                raise KeyedError(
                    "mcp.listen",
                    "the MCP endpoint is plain HTTP and cannot attest an mTLS caller; use "
                    "identity mode pod or jwt (the client's Authorization carries the JWT-SVID)",
                )
        for name, server in self.mcp_servers.items():
            if SERVER_NAME_RE.match(name) is None:
                raise KeyedError(
                    f"mcp_servers.{name}",
                    "a server name is lowercase letters, digits and '-', starting with a letter "
                    "(it prefixes the server's tools, NAME.tool, and resource URIs)",
                )
            if server.target and server.target not in self.targets:
                raise KeyedError(
                    f"mcp_servers.{name}.target",
                    f"{server.target!r} is not a configured target (targets: "
                    f"{', '.join(sorted(self.targets)) or 'none'})",
                )
            if server.target and self.targets[server.target].auth.type == "token-exchange":
                raise KeyedError(
                    f"mcp_servers.{name}.target",
                    "an MCP server's session is shared by every caller: its target cannot use "
                    "token-exchange (a per-user credential)",
                )

    def _check_a2a(self) -> None:
        if self.a2a.listen:
            if self.a2a.listen.startswith("unix:") or not is_local_address(self.a2a.listen):
                raise KeyedError(
                    "a2a.listen",
                    f"{self.a2a.listen!r} is not a loopback HOST:PORT (the A2A endpoint is "
                    "unencrypted HTTP for the agent in the same pod, and the cards it serves "
                    "point at it by URL)",
                )
            if self.identity.mode == "mtls":
                raise KeyedError(
                    "a2a.listen",
                    "the A2A endpoint is plain HTTP and cannot attest an mTLS caller; use "
                    "identity mode pod or jwt (the client's Authorization carries the JWT-SVID)",
                )
            if self.identity.mode == "pod" and not self.identity.pod_tcp:
                raise KeyedError(
                    "a2a.listen",
                    f"{self.a2a.listen!r} is TCP: in identity mode pod every process that can "
                    "reach it would be the pod's agent. Opt in with identity.pod_tcp: true "
                    "(docs/identity.md says what that trusts)",
                )
        for name in self.a2a_peers:
            if PEER_NAME_RE.match(name) is None:
                raise KeyedError(
                    f"a2a_peers.{name}",
                    "a peer name is lowercase letters, digits, '_' and '-', starting with a "
                    "letter or digit (it is a URL path segment and the PEER of PEER.SKILL)",
                )

    def _check_a2a_inbound(self) -> None:
        inbound = self.a2a_inbound
        if not inbound.listen:
            return
        if self.identity.mode == "static":
            raise KeyedError(
                "a2a_inbound.listen",
                "the inbound listener serves TLS with the sidecar's X.509-SVID and verifies "
                "callers against the trust bundles: it needs a Workload API (identity mode "
                "pod, jwt or mtls)",
            )
        issuer = inbound.users.issuer
        if issuer and issuer not in self.users.issuers:
            raise KeyedError(
                "a2a_inbound.users.issuer",
                f"{issuer!r} is not a configured user token issuer (users.issuers: "
                f"{', '.join(sorted(self.users.issuers)) or 'none'})",
            )

    def worker_count(self, cpus: int) -> int:
        """How many worker processes serve: ``server.workers`` (0 is 1), ``cpus`` for
        ``auto`` (at most MAX_WORKERS: a 96-CPU node without a CPU limit runs 64), and 1 when
        nothing could be shared (no TCP listener). sidecar.workers.planned_workers logs why."""
        if not self.shares_tcp:
            return 1
        if self.server.workers == "auto":
            return min(MAX_WORKERS, max(1, cpus))
        return max(1, self.server.workers)

    @property
    def shares_tcp(self) -> bool:
        """Whether any listener is TCP (gRPC or the front door): what workers can share."""
        return bool(self.frontdoor.listen) or any(
            not address.startswith("unix:") for address in self.server.listen
        )

    @property
    def state_db(self) -> Path:
        return self.state.dir / "state.db"

    @property
    def approvals_listen(self) -> str:
        """The admin listener's address, the default resolved."""
        return self.approvals.listen or f"unix://{self.state.dir / 'approvals.sock'}"


def load_settings(path: str | Path, overrides: list[str] | None = None) -> Settings:
    """Read and validate the YAML config at ``path``; ``overrides`` are ``dotted.key=value``
    (the value parsed as YAML; sidecar.overrides has the quoting for names with dots), applied
    before validation, so they are checked the same way."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    raw = raw if raw is not None else {}
    if overrides and not isinstance(raw, dict):
        raise ConfigError(f"{path}: --set cannot set inside a config that is not a mapping")
    try:  # a quoted segment addresses a name with dots: tools."tickets.get".path=...
        apply_overrides(raw, list(overrides or []))
    except OverrideError as exc:
        raise ConfigError(str(exc)) from None
    return parse_settings(raw, source=path)


def parse_settings(raw: Any, *, source: Path) -> Settings:
    """Validate an already-parsed mapping; ``source`` names the file in errors and anchors paths."""
    try:
        settings = convert(Settings, raw, "", source.parent)
    except KeyedError as exc:
        raise ConfigError(f"{source}: {exc.key}: {exc}") from None
    return settings
