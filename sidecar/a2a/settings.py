"""A2A configuration for outbound calls: the agent-facing loopback endpoint (``a2a``) and
the peer agents it may call (``a2a_peers.NAME``), validated once with the rest of the
configuration (sidecar/typed_config.py converts and names the keys; these classes check their
own values; sidecar/config.py checks what spans sections, such as ``a2a.listen`` on loopback).

A peer's credential reuses the targets' credential code: :meth:`A2aPeerSettings.as_target`
is the target the relay and the credential cache see for it (``a2a:NAME``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar.relay.settings import TargetAuthSettings, TargetSettings
from sidecar.validate import MIB, SPIFFE_ID_RE, check, check_base_url

__all__ = [
    "PEER_NAME_RE",
    "A2aCredentialSettings",
    "A2aPeerSettings",
    "A2aSettings",
    "A2aSkillSettings",
    "peer_target",
]

# A peer's name is a URL path segment (/peers/NAME) and the first half of ``PEER.SKILL``.
PEER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# a2a.task_ownership_ttl_s bounds (NaN and infinity fail both comparisons).
MIN_OWNERSHIP_TTL_S = 600.0
MAX_OWNERSHIP_TTL_S = 10 * 365 * 86400.0


def peer_target(name: str) -> str:
    """The name a peer's relay pool and credential are kept under."""
    return f"a2a:{name}"


@dataclass(frozen=True)
class A2aSettings:
    """The agent's loopback A2A endpoint: ``GET /peers/PEER/.well-known/agent-card.json``
    and ``POST /peers/PEER`` (JSON-RPC)."""

    # HOST:PORT on loopback; empty: no A2A endpoint.
    listen: str = ""
    # How long a send stepped up by policy waits for an approver before the agent gets
    # step_up_required with the approval's id (0: at once).
    wait_for_approval_s: float = 0.0
    read_timeout_s: float = 30.0
    max_connections: int = 256
    # Which local agent or caller owns each A2A task and context id (a2a_task_owners, both
    # directions): a row unused this long is pruned, and its id refused from then on.
    task_ownership_ttl_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")
        check(self.wait_for_approval_s >= 0, "wait_for_approval_s: must be >= 0")
        check(self.read_timeout_s > 0, "read_timeout_s: must be > 0")
        check(self.max_connections >= 1, "max_connections: must be >= 1")
        check(
            MIN_OWNERSHIP_TTL_S <= self.task_ownership_ttl_s <= MAX_OWNERSHIP_TTL_S,
            f"task_ownership_ttl_s: must be a duration in seconds from {MIN_OWNERSHIP_TTL_S:.0f} "
            f"(a row's use is recorded at most once a minute) to {MAX_OWNERSHIP_TTL_S:.0f} "
            "(10 years)",
        )


@dataclass(frozen=True)
class A2aSkillSettings:
    """What the sidecar is told about one skill of a peer (never what the peer says)."""

    operation: Literal["read", "act", "delegate"] = "act"


@dataclass(frozen=True)
class A2aCredentialSettings:
    """The credential the sidecar presents to a peer: ``jwt_svid`` (Bearer for
    ``audience``), ``mtls`` (the X.509-SVID), ``token_exchange`` (the user's token exchanged,
    RFC 8693), ``bearer`` (a static token from ``token_file``) or ``none``. The same code as
    ``targets.NAME.auth`` (sidecar/identity/credentials.py) mints and injects it."""

    kind: Literal["none", "jwt_svid", "mtls", "token_exchange", "bearer"] = "none"
    audience: str = ""
    token_file: Path | None = None
    token_endpoint: str = ""
    resource: str = ""
    scopes: tuple[str, ...] = ()
    assertion_audience: str = ""

    def __post_init__(self) -> None:
        try:
            self.as_auth()
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    def as_auth(self) -> TargetAuthSettings:
        return TargetAuthSettings(
            type=self.kind.replace("_", "-"),  # type: ignore[arg-type]
            audience=self.audience,
            token_file=self.token_file,
            token_endpoint=self.token_endpoint,
            resource=self.resource,
            scopes=self.scopes,
            assertion_audience=self.assertion_audience,
        )


@dataclass(frozen=True)
class A2aPeerSettings:
    """One peer agent: where its card is (``url`` + ``/.well-known/agent-card.json``), who
    it must be, the credential it gets, and the bounds of a call to it."""

    url: str
    spiffe_id: str = ""
    issuer: str = ""
    credential: A2aCredentialSettings = field(default_factory=A2aCredentialSettings)
    card_keys: Path | None = None
    require_signed_card: bool = False
    # PEM bundle to verify an https peer with (default: the system's CAs; not with mtls).
    ca_file: Path | None = None
    # The whole call, every streamed event included, ends by then (peer_timeout).
    timeout_s: float = 30.0
    # The agent's JSON-RPC request is refused above this (message_too_large), before any
    # byte reaches the peer.
    max_message_bytes: int = 1 * MIB
    # The peer's answer (unary) or any one streamed event is bounded by this.
    max_response_bytes: int = 4 * MIB
    skills: Mapping[str, A2aSkillSettings] = field(default_factory=dict)
    # The A2A binding spoken to the peer: ``auto`` (the pinned card's, JSON-RPC preferred),
    # ``jsonrpc`` or ``http_json`` (REST routes under ``url``; the agent still speaks JSON-RPC).
    binding: Literal["auto", "jsonrpc", "http_json"] = "auto"
    # Task and context ids one local agent may own at this peer before a contextId it
    # invents is refused (task_ownership_limit). Counted on each such claim: 1..1000000.
    max_owned_per_agent: int = 10000

    def __post_init__(self) -> None:
        try:
            check_base_url(self.url)
        except ValueError as exc:  # named as this section names it
            raise ValueError("url" + str(exc).removeprefix("base_url")) from None
        check(
            not self.spiffe_id or SPIFFE_ID_RE.match(self.spiffe_id) is not None,
            f"spiffe_id: {self.spiffe_id!r} is not a SPIFFE ID",
        )
        check(self.timeout_s > 0, "timeout_s: must be > 0")
        check(
            self.binding in ("auto", "jsonrpc", "http_json"),
            f"binding: {self.binding!r} is not one of auto, jsonrpc, http_json",
        )
        check(self.max_message_bytes > 0, "max_message_bytes: must be > 0")
        check(self.max_response_bytes > 0, "max_response_bytes: must be > 0")
        check(
            1 <= self.max_owned_per_agent <= 1_000_000,
            "max_owned_per_agent: must be in 1..1000000",
        )
        if self.credential.kind == "mtls":
            check(urlsplit(self.url).scheme == "https", "credential: kind mtls needs an https url")
            check(self.ca_file is None, "ca_file: not with mtls (the SPIFFE bundle is used)")
        for skill in self.skills:
            check(bool(skill) and skill.strip() == skill, f"skills: {skill!r} is not a skill id")

    def operation_of(self, skill: str) -> str:
        """The configured operation of ``skill`` (``act`` when it is not configured)."""
        found = self.skills.get(skill)
        return found.operation if found is not None else "act"

    def as_target(self) -> TargetSettings:
        """The target the relay pool and the credential code see for this peer."""
        return TargetSettings(
            base_url=self.url,
            timeout_s=self.timeout_s,
            ca_file=self.ca_file,
            auth=self.credential.as_auth(),
        )
