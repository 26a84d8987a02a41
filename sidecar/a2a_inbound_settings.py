"""The ``a2a_inbound`` section: the sidecar in front of its agent's own A2A server
(sidecar/a2a/inbound.py, docs/a2a.md "Inbound"). Validated once, before anything listens.
Top-level like the other ``*_settings`` modules: configuration sits below the transports
(tests/unit/test_layering.py), and ``sidecar.a2a.*`` is a transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.validate import MIB, SPIFFE_ID_RE, check, check_host_port, is_local_address

__all__ = ["InboundSettings", "InboundUsers"]


@dataclass(frozen=True)
class InboundUsers:
    """Accept user bearer tokens from one configured ``users.issuers`` entry."""

    issuer: str = ""


@dataclass(frozen=True)
class InboundSettings:
    """Where peers reach the pod (TLS with the X.509-SVID) and where the agent listens."""

    # HOST:PORT where peers connect (TLS); empty: no inbound listener.
    listen: str = ""
    # The agent's own A2A server (JSON-RPC), loopback only: nothing else may reach it.
    agent_url: str = ""
    # The agent's card (JSON), served at /.well-known/agent-card.json with its interface URLs
    # pointing at the listener.
    card: Path | None = None
    # JWS-sign the served card with the sidecar's X.509-SVID key (requires ``url``: nothing
    # signed ever comes from a request header).
    sign_card: bool = False
    # The URL peers reach the listener at (the card's interface URL); unsigned cards only:
    # default https:// and the Host the card was fetched with.
    url: str = ""
    # Sidecars whose transaction tokens are accepted (every level, the first included):
    # SPIFFE IDs, or prefixes ending in "/". Empty: no Txn-Token is accepted.
    txn_issuers: tuple[str, ...] = ()
    # HOST:PORT of origin listeners this sidecar may ask whether a transaction is still
    # active (rctx.status); empty: none (a token naming another is refused).
    txn_status_hosts: tuple[str, ...] = ()
    # How long an origin's "active" answer is reused for the same transaction (0: ask on
    # every call); an "ended" one is final and kept longer.
    txn_status_cache_s: float = 2.0
    users: InboundUsers = field(default_factory=InboundUsers)
    # Accept a JWT-SVID bearer (audience: this sidecar's SPIFFE ID) instead of a client
    # certificate. With neither this nor users, a client certificate is required.
    accept_jwt_svid: bool = True
    # Callers' trust domains (default: the sidecar's own).
    trust_domains: tuple[str, ...] = ()
    # Who owns the tasks inbound calls open: the agent's SPIFFE ID as its calls are attested
    # (default: the sidecar's own, which is the agent's in identity mode pod).
    agent_id: str = ""
    # The tasks inbound calls open live this long (0: tasks.default_ttl_s).
    task_ttl_s: int = 0
    timeout_s: float = 300.0
    max_message_bytes: int = MIB
    # Transaction tokens this sidecar mints live at most this long.
    txn_token_ttl_s: int = 300

    def __post_init__(self) -> None:
        if not self.listen:
            return
        check_host_port(self.listen)
        parts = urlsplit(self.agent_url)
        check(
            parts.scheme == "http" and bool(parts.hostname) and parts.port is not None,
            f"agent_url: {self.agent_url!r} is not http://HOST:PORT (the agent's own A2A server)",
        )
        host = parts.hostname or ""
        check(
            is_local_address(f"{host}:{parts.port}") and not parts.username and not parts.query,
            f"agent_url: {self.agent_url!r} is not on loopback: only the sidecar may reach the "
            "agent's A2A server, or callers would bypass it",
        )
        check(
            self.card is None or self.card.is_file(),
            f"card: {self.card} is not a file",
        )
        if self.url:
            url = urlsplit(self.url)
            check(
                url.scheme == "https" and bool(url.hostname) and not url.query,
                f"url: {self.url!r} is not an https URL",
            )
        check(
            not self.sign_card or bool(self.url),
            "sign_card: requires url (the signed card's interface URL is never taken from the "
            "request's Host header)",
        )
        for issuer in self.txn_issuers:
            check(
                SPIFFE_ID_RE.match(issuer.rstrip("/")) is not None,
                f"txn_issuers: {issuer!r} is not a SPIFFE ID or a SPIFFE ID prefix ending in /",
            )
        for host in self.txn_status_hosts:
            check_host_port(host)
        if self.agent_id:
            check(
                SPIFFE_ID_RE.match(self.agent_id) is not None,
                f"agent_id: {self.agent_id!r} is not a SPIFFE ID",
            )
        check(self.task_ttl_s >= 0, "task_ttl_s: must be >= 0")
        check(0 <= self.txn_status_cache_s <= 60, "txn_status_cache_s: must be in 0..60")
        check(self.timeout_s > 0, "timeout_s: must be > 0")
        check(self.max_message_bytes > 0, "max_message_bytes: must be > 0")
        check(0 < self.txn_token_ttl_s <= 3600, "txn_token_ttl_s: must be in 1..3600")
