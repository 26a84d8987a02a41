"""YAML configuration -> frozen, typed settings, validated once before anything listens.

Every section starts from named defaults (the dataclass field defaults below are the reference;
``docs/configuration.md`` lists them). Loading is strict: an unknown key, a wrong type, a bad
value or a missing file raises :class:`ConfigError` naming the file and the dotted key.
Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from sidecar.console.settings import ConsoleSettings
from sidecar.errors import SidecarError
from sidecar.mcp.settings import SERVER_NAME_RE, McpServerSettings, McpSettings
from sidecar.overrides import OverrideError, apply_overrides
from sidecar.state.settings import StateSettings

__all__ = [
    "AdminSettings",
    "ApprovalSettings",
    "AuditSettings",
    "BudgetSettings",
    "ConfigError",
    "DelegationSettings",
    "FrontDoorSettings",
    "IdentitySettings",
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
    "is_local_address",
    "load_settings",
    "parse_settings",
]

MIB = 1024 * 1024
SPIFFE_ID_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$")
_PATH_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(SidecarError):
    """The configuration cannot be used; the message names the file and the key."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# The agent API's default listener: a unix socket (docs/identity.md).
DEFAULT_AGENT_SOCKET = "unix:///run/agent-sidecar/agent.sock"


@dataclass(frozen=True)
class ServerSettings:
    """The agent-facing gRPC listener."""

    # grpc addresses: "unix:///path" (the default: who may connect is decided by the socket
    # file's mode and group), or "127.0.0.1:PORT", "[::1]:PORT", "localhost:PORT" (in identity
    # mode pod only with identity.pod_tcp: every process in the network namespace is trusted).
    listen: tuple[str, ...] = (DEFAULT_AGENT_SOCKET,)
    # The unix listeners' file mode (octal text) and group (a gid or group name; empty: the
    # sidecar's own): connecting needs write permission on the socket file.
    socket_mode: str = "0660"
    socket_group: str = ""
    # Largest request the sidecar decodes; larger ones get INVALID_ARGUMENT (request_too_large).
    max_request_bytes: int = 1 * MIB
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_s: float = 5.0
    reflection: bool = True
    # HOST:PORT of the kubelet's probe port: gRPC Health/Check only, nothing else (empty:
    # none). Kubernetes' native grpc probes reach the pod's IP (sidecar/health_listener.py).
    health_listen: str = ""
    # Processes serving the TCP listeners (SO_REUSEPORT); 0: one per CPU available to the
    # container (cgroup quota honoured). Unix listeners are served by worker 0 alone, so with
    # no TCP listener (gRPC or front door) 0 means 1 (see sidecar.workers).
    workers: int = 0

    def __post_init__(self) -> None:
        _check(len(self.listen) > 0, "listen: at least one address is required")
        for address in self.listen:
            _check_address(address)
        _check(0 <= self.workers <= 64, "workers: must be between 0 and 64 (0: one per CPU)")
        _check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None
            and int(self.socket_mode, 8) & 0o007 == 0,
            f"socket_mode: {self.socket_mode!r} must be octal like 0660 and give others nothing",
        )
        _check(self.max_request_bytes > 0, "max_request_bytes: must be > 0")
        _check(self.grace_s >= 0, "grace_s: must be >= 0")
        if self.health_listen:
            _, sep, port = self.health_listen.rpartition(":")
            _check(
                bool(sep) and port.isdigit(),
                f"health_listen: {self.health_listen!r} is not HOST:PORT",
            )


def _check_address(address: str) -> None:
    if address.startswith("unix:"):
        _check(len(address) > len("unix:"), f"listen: {address!r} names no socket path")
        return
    _, sep, port = address.rpartition(":")
    _check(bool(sep) and port.isdigit(), f"listen: {address!r} is not HOST:PORT or unix:PATH")


def _check_base_url(url: str) -> None:
    """An upstream's root: http(s), a host, and nothing that could smuggle credentials or a
    different request (query, fragment, userinfo)."""
    parts = urlsplit(url)
    _check(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        f"base_url: {url!r} is not an http(s) URL",
    )
    _check(
        not parts.query and not parts.fragment and not parts.username,
        f"base_url: {url!r} must not carry a query, fragment or credentials",
    )


def is_local_address(address: str) -> bool:
    """Loopback or a unix socket: reachable only from inside the pod."""
    if address.startswith("unix:"):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class IdentitySettings:
    """Who the caller is.

    ``pod``: the sidecar's own X.509-SVID names the workload (loopback/unix listener only).
    ``jwt``: the agent sends a JWT-SVID for ``audience`` as ``authorization: Bearer``.
    ``mtls``: the agent connects with its X.509-SVID; the listener requires client certs.
    ``static``: every caller is ``spiffe_id``, unattested: local development only.
    """

    mode: Literal["pod", "jwt", "mtls", "static"] = "pod"
    # Workload API socket (unix path or unix:// URI); default: $SPIFFE_ENDPOINT_SOCKET.
    socket: str = ""
    # jwt mode: the audience the agent's JWT-SVID must carry.
    audience: str = ""
    # Trust domains whose callers are accepted (jwt, mtls); default: the sidecar's own.
    trust_domains: tuple[str, ...] = ()
    # static mode only.
    spiffe_id: str = ""
    # Cached JWT-SVIDs for upstreams are refreshed this long before they expire.
    jwt_refresh_margin_s: float = 30.0
    # pod mode: also serve TCP loopback listeners (server.listen HOST:PORT, the front door).
    # Every process in the network namespace is then the pod's agent: in Kubernetes every
    # container of the pod. Off: pod mode serves unix sockets only.
    pod_tcp: bool = False

    def __post_init__(self) -> None:
        if self.mode == "static":
            _check(bool(self.spiffe_id), "spiffe_id: required when mode is static")
            _check(
                SPIFFE_ID_RE.match(self.spiffe_id) is not None,
                f"spiffe_id: {self.spiffe_id!r} is not a SPIFFE ID (spiffe://trust-domain/path)",
            )
        else:
            _check(not self.spiffe_id, f"spiffe_id: only for mode static, not {self.mode}")
        if self.mode == "jwt":
            _check(bool(self.audience), "audience: required when mode is jwt")
            _check(
                not self.audience.startswith("agent-sidecar-delegate:"),
                "audience: agent-sidecar-delegate: is reserved for delegation links",
            )
        for td in self.trust_domains:
            _check(
                re.fullmatch(r"[a-z0-9._-]+", td) is not None,
                f"trust_domains: {td!r} is not a trust domain name (no spiffe:// prefix)",
            )
        _check(self.jwt_refresh_margin_s >= 0, "jwt_refresh_margin_s: must be >= 0")


@dataclass(frozen=True)
class IssuerSettings:
    """An OpenID Connect issuer whose tokens name the user an agent acts for."""

    # Must equal the tokens' ``iss`` and the discovery document's ``issuer``.
    issuer: str
    # Accepted audiences (the token's ``aud`` must contain one).
    audiences: tuple[str, ...]
    # Default: from ``{issuer}/.well-known/openid-configuration``.
    jwks_uri: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    # Claims that hold the user's groups and roles (a list of strings, or one string).
    groups_claim: str = "groups"
    roles_claim: str = "roles"
    # Clock skew allowed on exp / nbf / iat.
    leeway_s: float = 30.0
    # PEM bundle for the issuer's TLS (default: the system's CAs).
    ca_file: Path | None = None
    # Keys are fetched again after this long (and at once for an unknown kid, at most once
    # per refetch_min_s).
    jwks_max_age_s: float = 300.0
    refetch_min_s: float = 10.0
    fetch_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        _check(
            parts.scheme == "https"
            or (
                parts.scheme == "http" and is_local_address(f"{parts.hostname}:{parts.port or 80}")
            ),
            f"issuer: {self.issuer!r} must be https (http only on loopback, for tests)",
        )
        _check(bool(self.audiences), "audiences: at least one audience is required")
        for alg in self.algorithms:
            _check(
                alg
                in (
                    "RS256",
                    "RS384",
                    "RS512",
                    "ES256",
                    "ES384",
                    "ES512",
                    "PS256",
                    "PS384",
                    "PS512",
                ),
                f"algorithms: {alg!r} is not allowed (asymmetric RS/ES/PS only; never none or "
                "HMAC)",
            )
        _check(bool(self.algorithms), "algorithms: at least one")
        _check(self.leeway_s >= 0 and self.leeway_s <= 300, "leeway_s: 0..300")
        _check(self.jwks_max_age_s > 0 and self.refetch_min_s >= 0, "jwks_max_age_s: > 0")
        _check(self.fetch_timeout_s > 0, "fetch_timeout_s: must be > 0")


@dataclass(frozen=True)
class UserSettings:
    """The end user an agent acts for: a token it passes along, verified against ``issuers``."""

    # The gRPC metadata key and front-door header that carry the user's token.
    header: str = "x-user-token"
    issuers: Mapping[str, IssuerSettings] = field(default_factory=dict)
    # A verified token is trusted again without re-verifying for this long (never past its
    # exp); agents send the same token on every call. 0: verify every call.
    cache_s: float = 60.0
    cache_entries: int = 1024

    def __post_init__(self) -> None:
        _check(
            re.fullmatch(r"[a-z0-9-]+", self.header) is not None
            and self.header not in ("authorization", "traceparent"),
            f"header: {self.header!r} must be a lowercase header name other than "
            "authorization and traceparent",
        )
        seen = [i.issuer for i in self.issuers.values()]
        _check(len(seen) == len(set(seen)), "issuers: two entries for one issuer URL")
        _check(0 <= self.cache_s <= 300, "cache_s: 0..300")
        _check(self.cache_entries >= 1, "cache_entries: must be >= 1")


@dataclass(frozen=True)
class AuthZenSettings:
    """The AuthZEN Authorization API 1.0: other enforcement points ask the same Rego."""

    # unix:///PATH (who may connect: socket_mode), or HOST:PORT with mTLS: the sidecar's
    # X.509-SVID, and callers present theirs, one of ``callers``. Empty: off.
    listen: str = ""
    callers: tuple[str, ...] = ()
    socket_mode: str = "0600"
    # The PDP identifier published in /.well-known/authzen-configuration (an https URL);
    # default: https://HOST:PORT of the listener, or https://localhost for a unix socket.
    pdp_url: str = ""
    # Evaluations in one boxcar request, at most.
    max_evaluations: int = 64

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            _check_address(self.listen)
            _check(
                bool(self.callers),
                "callers: required with a TCP listener (the SPIFFE IDs allowed to ask)",
            )
        for caller in self.callers:
            _check(
                SPIFFE_ID_RE.match(caller) is not None, f"callers: {caller!r} is not a SPIFFE ID"
            )
        _check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None
            and int(self.socket_mode, 8) & 0o007 == 0,
            f"socket_mode: {self.socket_mode!r} must be octal like 0600 and give others nothing",
        )
        if self.pdp_url:
            parts = urlsplit(self.pdp_url)
            _check(
                parts.scheme == "https" and not parts.query and not parts.fragment,
                "pdp_url: an https URL without query or fragment",
            )
        _check(1 <= self.max_evaluations <= 1000, "max_evaluations: 1..1000")


@dataclass(frozen=True)
class PolicySettings:
    """Where decisions come from."""

    engine: Literal["embedded", "opa"] = "embedded"
    dir: Path = Path("rego")
    query: str = "data.agentsidecar.authz.decision"
    timeout_ms: int = 250
    # embedded: interpreters evaluating in threads, in parallel; opa: connections to OPA.
    workers: int = 2
    # embedded: evaluate on the event loop (no thread hand-off) while every evaluation costs
    # at most this much CPU; the first one that costs more moves this revision to the threads,
    # where the wait is bounded by timeout_ms. 0: always in threads.
    inline_max_ms: float = 5.0
    # embedded: how often the policy dir is checked for changes (0: only on SIGHUP).
    reload_interval_ms: int = 1000
    # opa: the OPA server (http://HOST:PORT or unix:///PATH).
    opa_url: str = "http://127.0.0.1:8181"
    # A second policy evaluated beside the active one for every call; recorded, never enforced.
    shadow: Path | None = None
    # Read-only tools allowed when the engine fails (not when policy denies). Off by default.
    fail_open_on_engine_error: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(
            re.fullmatch(r"data(\.[A-Za-z_][A-Za-z0-9_]*)+", self.query) is not None,
            f"query: {self.query!r} is not a data reference like data.agentsidecar.authz.decision",
        )
        _check(self.timeout_ms > 0, "timeout_ms: must be > 0")
        _check(1 <= self.workers <= 64, "workers: must be between 1 and 64")
        _check(0 <= self.inline_max_ms <= 1000, "inline_max_ms: must be between 0 and 1000")
        _check(self.reload_interval_ms >= 0, "reload_interval_ms: must be >= 0")
        parts = urlsplit(self.opa_url)
        _check(
            (parts.scheme == "http" and bool(parts.hostname))
            or (parts.scheme == "unix" and bool(parts.path)),
            f"opa_url: {self.opa_url!r} is not http://HOST:PORT or unix:///PATH",
        )


@dataclass(frozen=True)
class AuditSettings:
    """Where audit records go, and how hard the sidecar insists they get there."""

    path: Path = Path("audit.log")
    # strict: a record that cannot be written fails the call (before any relay);
    # best_effort: a bounded in-memory queue, oldest dropped (and counted) when full.
    mode: Literal["strict", "best_effort"] = "strict"
    # fsync after every record: durable across power loss, at a cost per call.
    fsync: bool = False
    buffer: int = 10000
    # Rotate the file at this size (0: never); keep this many rotated files.
    max_bytes: int = 0
    keep_files: int = 10
    # A signed checkpoint every N records or T seconds (and at shutdown).
    checkpoint_every: int = 100
    checkpoint_interval_s: float = 60.0
    # Checkpoints are also written here (default: <path>.checkpoints).
    checkpoints_path: Path | None = None
    # Development signing key (Ed25519 PEM, created if missing) when no SVID is available.
    signing_key: Path | None = None
    stdout: bool = False
    # A decision-log collector (OPA decision-log event format), batched and retried.
    http_url: str = ""
    http_batch: int = 100
    http_interval_s: float = 2.0

    def __post_init__(self) -> None:
        _check(self.buffer > 0, "buffer: must be > 0")
        _check(self.max_bytes >= 0, "max_bytes: must be >= 0")
        _check(self.keep_files >= 1, "keep_files: must be >= 1")
        _check(self.checkpoint_every >= 1, "checkpoint_every: must be >= 1")
        _check(self.checkpoint_interval_s > 0, "checkpoint_interval_s: must be > 0")
        if self.http_url:
            parts = urlsplit(self.http_url)
            _check(
                parts.scheme in ("http", "https") and bool(parts.hostname),
                f"http_url: {self.http_url!r} is not an http(s) URL",
            )


@dataclass(frozen=True)
class AdminSettings:
    """The admin listener: Prometheus metrics (``/metrics``)."""

    # HOST:PORT; empty: no admin listener.
    listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            _check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")


@dataclass(frozen=True)
class ApprovalSettings:
    """Step-up approvals: the approver-facing admin API and the limits on pending requests."""

    # unix:///PATH (who may connect is decided by the socket file's permissions) or HOST:PORT
    # (mTLS: the approver's X.509-SVID must be in `approvers`). Empty: <state.dir>/approvals.sock.
    listen: str = ""
    # Octal permission bits of the unix socket file.
    socket_mode: str = "0600"
    # SPIFFE IDs allowed to approve over mTLS (required for a HOST:PORT listener).
    approvers: tuple[str, ...] = ()
    # Names for the `approvers` of a decision's approval obligation: group -> members
    # (SPIFFE IDs, or local:NAME for operators on the unix socket).
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Upper bound on an approval's lifetime, whatever the obligation's ttl_s.
    max_ttl_s: int = 3600
    # Step-up flood control per subject: pending approvals held at once, new ones per minute.
    max_pending_per_subject: int = 10
    max_new_per_minute: int = 30
    # POSTs each new pending approval as JSON (chat, ticketing). Empty: off.
    notify_url: str = ""
    notify_attempts: int = 5
    notify_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            _check_address(self.listen)
            _check(
                len(self.approvers) > 0,
                "approvers: required when listen is HOST:PORT (mTLS); list the SPIFFE IDs "
                "allowed to approve, or listen on a unix socket",
            )
        _check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None,
            f"socket_mode: {self.socket_mode!r} is not octal permission bits like 0600",
        )
        for approver in self.approvers:
            _check(
                SPIFFE_ID_RE.match(approver) is not None,
                f"approvers: {approver!r} is not a SPIFFE ID",
            )
        _check(self.max_ttl_s > 0, "max_ttl_s: must be > 0")
        _check(self.max_pending_per_subject > 0, "max_pending_per_subject: must be > 0")
        _check(self.max_new_per_minute > 0, "max_new_per_minute: must be > 0")
        if self.notify_url:
            parts = urlsplit(self.notify_url)
            _check(
                parts.scheme in ("http", "https") and bool(parts.hostname),
                f"notify_url: {self.notify_url!r} is not an http(s) URL",
            )
        _check(self.notify_attempts >= 1, "notify_attempts: must be >= 1")
        _check(self.notify_timeout_s > 0, "notify_timeout_s: must be > 0")


@dataclass(frozen=True)
class TaskSettings:
    """Task lifetimes: StartTask's ttl_s defaults to ``default_ttl_s``, capped at ``max_ttl_s``."""

    default_ttl_s: int = 3600
    max_ttl_s: int = 86400

    def __post_init__(self) -> None:
        _check(self.default_ttl_s > 0, "default_ttl_s: must be > 0")
        _check(self.max_ttl_s >= self.default_ttl_s, "max_ttl_s: must be >= default_ttl_s")


@dataclass(frozen=True)
class DelegationSettings:
    """Delegation chains: the most links the sidecar verifies before refusing a chain (a
    bound on work; how deep a chain may be is policy's, data.agentsidecar.max_delegation_depth)."""

    max_links: int = 8

    def __post_init__(self) -> None:
        _check(1 <= self.max_links <= 32, "max_links: must be between 1 and 32")


@dataclass(frozen=True)
class ProviderSettings:
    """A model provider. ``openai``: any OpenAI-compatible API (OpenAI, Azure OpenAI's
    /openai/v1, vLLM, Ollama, LiteLLM...), ``POST {base_url}/chat/completions``. The key is
    read from ``key_file`` (a mounted Secret), re-read when the file changes, sent as
    ``Authorization: Bearer`` and never shown to the agent, logged or given to policy."""

    base_url: str
    type: Literal["openai"] = "openai"
    # A file holding the API key; empty: no key (a local server).
    key_file: Path | None = None
    timeout_s: float = 60.0
    # PEM bundle to verify an https provider with (default: the system's CAs).
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        _check(self.timeout_s > 0, "timeout_s: must be > 0")


@dataclass(frozen=True)
class ModelSettings:
    """A model alias agents may ask for: which provider, which upstream model."""

    provider: str
    # The provider's name for the model (default: the alias).
    model: str = ""
    # What a call to it counts as for policy (read: no side effects beyond the answer).
    operation: Literal["read", "act", "delegate"] = "read"


@dataclass(frozen=True)
class FrontDoorSettings:
    """The OpenAI-compatible HTTP listener on loopback (``base_url`` for unmodified SDKs)."""

    # HOST:PORT on loopback; empty: no front door.
    listen: str = ""
    # How long a stepped-up request waits for an approver before answering 409.
    wait_for_approval_s: float = 0.0
    max_request_bytes: int = 4 * MIB
    # Each read (request line, headers, body, and between keep-alive requests) must make
    # progress within this; idle and half-open connections are closed.
    read_timeout_s: float = 30.0
    # Live connections; at the cap the one idle the longest is shed (docs/models.md).
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            _check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")
            _check(
                is_local_address(self.listen) and not self.listen.startswith("unix:"),
                f"listen: {self.listen!r} is not a loopback HOST:PORT (the front door is "
                "unencrypted HTTP for the agent in the same pod)",
            )
        _check(self.wait_for_approval_s >= 0, "wait_for_approval_s: must be >= 0")
        _check(self.max_request_bytes > 0, "max_request_bytes: must be > 0")
        _check(self.read_timeout_s > 0, "read_timeout_s: must be > 0")
        _check(self.max_connections >= 1, "max_connections: must be >= 1")


@dataclass(frozen=True)
class BudgetSettings:
    """Hard token limits the sidecar enforces itself, whatever policy says (0: none)."""

    task_tokens: int = 0
    subject_tokens_per_day: int = 0

    def __post_init__(self) -> None:
        _check(self.task_tokens >= 0, "task_tokens: must be >= 0")
        _check(self.subject_tokens_per_day >= 0, "subject_tokens_per_day: must be >= 0")


@dataclass(frozen=True)
class RelaySettings:
    """How allowed calls reach their upstreams."""

    # Calls relayed at once; further calls wait for a slot (within their deadline).
    max_concurrency: int = 32
    # Calls relayed at once to any one target (or provider): a slow target can hold at most
    # this many slots, so it can never starve the others. 0: half of max_concurrency.
    max_per_target: int = 0
    max_response_bytes: int = 4 * MIB

    def __post_init__(self) -> None:
        _check(self.max_concurrency > 0, "max_concurrency: must be > 0")
        _check(self.max_per_target >= 0, "max_per_target: must be >= 0")
        _check(self.max_response_bytes > 0, "max_response_bytes: must be > 0")

    @property
    def per_target(self) -> int:
        return self.max_per_target or max(1, self.max_concurrency // 2)


@dataclass(frozen=True)
class TargetAuthSettings:
    """Upstream credential: ``jwt-svid`` (Bearer, for ``audience``), ``mtls``
    (the sidecar's X.509-SVID as client certificate, the upstream verified against the
    SPIFFE trust bundle and its DNS name), ``token-exchange`` (the user's token exchanged at
    ``token_endpoint`` for one for this upstream, RFC 8693), ``bearer`` (a static token from
    ``token_file``, for upstreams that know nothing better), or ``none``."""

    type: Literal["none", "jwt-svid", "mtls", "token-exchange", "bearer"] = "none"
    # bearer: the token is this file's content (a mounted Secret), read again when it changes.
    token_file: Path | None = None
    # jwt-svid: the JWT-SVID's audience; token-exchange: the audience asked for (optional).
    audience: str = ""
    # token-exchange: the authorization server, what to ask it for, how the sidecar proves
    # itself (its JWT-SVID as client assertion, for assertion_audience, default the
    # endpoint), and what the agent's user token is.
    token_endpoint: str = ""
    resource: str = ""
    scopes: tuple[str, ...] = ()
    assertion_audience: str = ""
    assertion_type: Literal["jwt-spiffe", "jwt-bearer"] = "jwt-spiffe"
    subject_token_type: Literal["access_token", "id_token", "jwt"] = "access_token"  # noqa: S105 (a token type name)
    ca_file: Path | None = None
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        exchange = (self.token_endpoint, self.resource, self.scopes, self.assertion_audience)
        _check(
            (self.token_file is not None) == (self.type == "bearer"),
            "token_file: required for type bearer, and only for it",
        )
        if self.type == "jwt-svid":
            _check(bool(self.audience), "audience: required when type is jwt-svid")
            _check(
                not self.audience.startswith("agent-sidecar-delegate:"),
                "audience: agent-sidecar-delegate: is reserved for delegation links",
            )
        elif self.type != "token-exchange":
            _check(not self.audience, "audience: only for type jwt-svid or token-exchange")
        if self.type == "token-exchange":
            _check(bool(self.token_endpoint), "token_endpoint: required for token-exchange")
            _check_base_url(self.token_endpoint)
            for scope in self.scopes:
                _check(bool(scope) and " " not in scope, f"scopes: {scope!r} is not a scope")
            _check(self.timeout_s > 0, "timeout_s: must be > 0")
        else:
            _check(
                not any(exchange) and self.ca_file is None,
                "token_endpoint, resource, scopes, assertion_audience, ca_file: only for type "
                "token-exchange",
            )


@dataclass(frozen=True)
class TargetSettings:
    """An upstream service that tools are relayed to."""

    base_url: str
    timeout_s: float = 10.0
    # PEM bundle to verify an https upstream with (default: the system's CAs).
    ca_file: Path | None = None
    # The credential the sidecar injects; the agent never sees it.
    auth: TargetAuthSettings = field(default_factory=lambda: TargetAuthSettings())

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if self.auth.type == "mtls":
            _check(parts.scheme == "https", "auth: type mtls needs an https base_url")
            _check(self.ca_file is None, "ca_file: not with auth mtls (the SPIFFE bundle is used)")
        _check_base_url(self.base_url)
        _check(self.timeout_s > 0, "timeout_s: must be > 0")


@dataclass(frozen=True)
class ToolSettings:
    """One tool an agent may call: which upstream, which operation kind, which request."""

    target: str
    operation: Literal["read", "act", "delegate"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    # Path under the target's base_url; {name} placeholders are filled from the arguments.
    path: str
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        _check(self.path.startswith("/"), f"path: {self.path!r} must start with '/'")
        _check("?" not in self.path and "#" not in self.path, "path: no query or fragment")
        _check(self.timeout_s is None or self.timeout_s > 0, "timeout_s: must be > 0")

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM_RE.findall(self.path))


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

    def __post_init__(self) -> None:
        mcp_tcp = self.mcp.listen and not self.mcp.listen.startswith("unix:")
        if self.identity.mode == "pod" and not self.identity.pod_tcp:
            tcp = [a for a in self.server.listen if not a.startswith("unix:")]
            if tcp or self.frontdoor.listen or mcp_tcp:
                key = "server.listen" if tcp else "frontdoor.listen"
                if not tcp and not self.frontdoor.listen:
                    key = "mcp.listen"
                address = (tcp or [self.frontdoor.listen or self.mcp.listen])[0]
                raise _KeyedError(
                    key,
                    f"{address!r} is TCP: in identity mode pod every "
                    "process that can reach it would be the pod's agent (in Kubernetes, every "
                    "container of the pod). Use a unix socket, or opt in with identity.pod_tcp: "
                    "true (docs/identity.md says what that trusts)",
                )
        if self.identity.mode != "mtls":
            for address in self.server.listen:
                if not is_local_address(address):
                    raise _KeyedError(
                        "server.listen",
                        f"{address!r} is not a loopback address or unix socket; with identity "
                        f"mode {self.identity.mode} the agent API must not be reachable from "
                        "outside the pod (only mode mtls may listen on other addresses)",
                    )
        if self.server.workers > 1 and not self.shares_tcp:
            raise _KeyedError(
                "server.workers",
                f"{self.server.workers} workers need a TCP listener to share (server.listen "
                "HOST:PORT or frontdoor.listen): a unix socket is served by one process only",
            )
        if self.approvals.listen and self.approvals.listen in self.server.listen:
            raise _KeyedError(
                "approvals.listen",
                "must not be an agent API address (server.listen): agents must not reach the "
                "approvals API",
            )
        for i, name in enumerate(self.policy.fail_open_on_engine_error):
            tool = self.tools.get(name)
            if tool is None or tool.operation != "read":
                raise _KeyedError(
                    f"policy.fail_open_on_engine_error[{i}]",
                    f"{name!r} is not a configured read tool; only read tools may fail open",
                )
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise _KeyedError(
                    f"models.{name}.provider",
                    f"{model.provider!r} is not a configured provider (providers: "
                    f"{', '.join(sorted(self.providers)) or 'none'})",
                )
        if self.frontdoor.listen and self.identity.mode == "mtls":
            raise _KeyedError(
                "frontdoor.listen",
                "the front door is plain HTTP on loopback and cannot attest an mTLS caller; "
                "use identity mode pod or jwt (the SDK's api key carries the JWT-SVID)",
            )
        self._check_mcp()
        for name, tool in self.tools.items():
            if tool.target not in self.targets:
                raise _KeyedError(
                    f"tools.{name}.target",
                    f"{tool.target!r} is not a configured target (targets: "
                    f"{', '.join(sorted(self.targets)) or 'none'})",
                )

    def _check_mcp(self) -> None:
        if self.mcp.listen:
            if not is_local_address(self.mcp.listen):
                raise _KeyedError(
                    "mcp.listen",
                    f"{self.mcp.listen!r} is not a loopback HOST:PORT or unix socket (the MCP "
                    "endpoint is unencrypted HTTP for the agent in the same pod)",
                )
            if self.identity.mode == "mtls":
                raise _KeyedError(
                    "mcp.listen",
                    "the MCP endpoint is plain HTTP and cannot attest an mTLS caller; use "
                    "identity mode pod or jwt (the client's Authorization carries the JWT-SVID)",
                )
        for name, server in self.mcp_servers.items():
            if SERVER_NAME_RE.match(name) is None:
                raise _KeyedError(
                    f"mcp_servers.{name}",
                    "a server name is lowercase letters, digits and '-', starting with a letter "
                    "(it prefixes the server's tools, NAME.tool, and resource URIs)",
                )
            if server.target and server.target not in self.targets:
                raise _KeyedError(
                    f"mcp_servers.{name}.target",
                    f"{server.target!r} is not a configured target (targets: "
                    f"{', '.join(sorted(self.targets)) or 'none'})",
                )
            if server.target and self.targets[server.target].auth.type == "token-exchange":
                raise _KeyedError(
                    f"mcp_servers.{name}.target",
                    "an MCP server's session is shared by every caller: its target cannot use "
                    "token-exchange (a per-user credential)",
                )

    def worker_count(self, cpus: int) -> int:
        """How many worker processes serve: ``server.workers``, or ``cpus`` when it is 0,
        and 1 when nothing could be shared (no TCP listener)."""
        if not self.shares_tcp:
            return 1
        return self.server.workers or cpus

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


class _KeyedError(ValueError):
    """A validation error that knows the full dotted key it belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


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
        settings = _convert(Settings, raw, "", source.parent)
    except _KeyedError as exc:
        raise ConfigError(f"{source}: {exc.key}: {exc}") from None
    return settings


def _convert(tp: Any, value: Any, key: str, base: Path) -> Any:
    where = key or "(top level)"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _KeyedError(where, f"expected a mapping, got {_kind(value)}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(map(str, value)) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields))
            raise _KeyedError(_join(key, unknown[0]), f"unknown key (known keys: {known})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], _join(key, name), base)
            elif dataclasses.is_dataclass(hints[name]) or typing.get_origin(hints[name]) in (
                Mapping,
                dict,
            ):
                # An absent section is an empty one: its own defaults apply, converted the same way.
                kwargs[name] = _convert(hints[name], {}, _join(key, name), base)
            elif isinstance(f.default, Path):
                kwargs[name] = (base / f.default).resolve()  # defaults are relative to the file
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _KeyedError(_join(key, name), "required key is missing")
        try:
            return tp(**kwargs)
        except _KeyedError:
            raise
        except ValueError as exc:
            message = str(exc)
            field_name, sep, rest = message.partition(": ")
            if sep and field_name in fields:
                raise _KeyedError(_join(key, field_name), rest) from None
            raise _KeyedError(where, message) from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise _KeyedError(where, f"{value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, base)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str) or not isinstance(value, list):
            raise _KeyedError(where, f"expected a list, got {_kind(value)}")
        return tuple(_convert(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise _KeyedError(where, f"expected a mapping, got {_kind(value)}")
        return types.MappingProxyType(
            {str(k): _convert(item, v, _join(key, str(k)), base) for k, v in value.items()}
        )
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _KeyedError(where, f"expected a path, got {_kind(value)}")
        return (base / value).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            raise _KeyedError(where, f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _KeyedError(where, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _KeyedError(where, f"expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _KeyedError(where, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"config type {tp!r} has no converter")  # a bug in this module


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(type(value), type(value).__name__)
