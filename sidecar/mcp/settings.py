"""MCP configuration: the agent-facing endpoint (``mcp``) and the upstream MCP servers
(``mcp_servers.NAME``), validated once with the rest of the configuration (sidecar/typed_config.py
converts and names the keys; these classes check their own values)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["McpRestartSettings", "McpServerSettings", "McpSettings", "McpToolSettings"]

MIB = 1024 * 1024
# mcp_servers.NAME.refresh_s: often enough to bound a silent change, rarely enough to spare
# the upstream (a list per interval per server).
MIN_REFRESH_S = 0.1
MAX_REFRESH_S = 3600.0
# A server's name prefixes its tools (``NAME.tool``) and its resources' URIs (``NAME.uri``,
# still a URI: a scheme may hold letters, digits, "+", "-" and "."), so it is kept to those.
SERVER_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class McpSettings:
    """The MCP endpoint agents connect to (Streamable HTTP)."""

    # HOST:PORT on loopback, or unix:///PATH; empty: no MCP endpoint.
    listen: str = ""
    path: str = "/mcp"
    # A JSON-RPC message from the agent larger than this is refused (413).
    max_message_bytes: int = 1 * MIB
    # How long a tools/call (resources/read, prompts/get) stepped up by policy waits for an
    # approver before the agent gets approval_required with the approval's id (0: at once).
    wait_for_approval_s: float = 0.0
    # Seals input_required's requestState (>= 32 bytes). Empty: a random key per process (a
    # restart or another replica refuses the state). The same file on every replica.
    request_state_key_file: Path | None = None
    # Handshake-era sessions kept at once, and how long an idle one is kept.
    max_sessions: int = 256
    session_idle_s: float = 3600.0
    socket_mode: str = "0660"
    read_timeout_s: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.listen and not self.listen.startswith("unix:"):
            _, sep, port = self.listen.rpartition(":")
            _check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")
        _check(self.path.startswith("/") and "?" not in self.path, "path: must start with '/'")
        _check(self.max_message_bytes > 0, "max_message_bytes: must be > 0")
        _check(self.wait_for_approval_s >= 0, "wait_for_approval_s: must be >= 0")
        _check(self.max_sessions >= 1, "max_sessions: must be >= 1")
        _check(self.session_idle_s > 0, "session_idle_s: must be > 0")
        _check(self.read_timeout_s > 0, "read_timeout_s: must be > 0")
        _check(self.max_connections >= 1, "max_connections: must be >= 1")
        _check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None
            and int(self.socket_mode, 8) & 0o007 == 0,
            f"socket_mode: {self.socket_mode!r} must be octal like 0660 and give others nothing",
        )


@dataclass(frozen=True)
class McpToolSettings:
    """What the sidecar is told about one upstream tool (never what the upstream says)."""

    operation: Literal["read", "act", "delegate"] = "act"


@dataclass(frozen=True)
class McpRestartSettings:
    """Supervision of a stdio server: restarts with doubling backoff, at most ``max`` in a
    row without a successful handshake in between (then the server stays down)."""

    max: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        _check(self.max >= 0, "max: must be >= 0")
        _check(self.backoff_s > 0, "backoff_s: must be > 0")
        _check(self.max_backoff_s >= self.backoff_s, "max_backoff_s: must be >= backoff_s")


@dataclass(frozen=True)
class McpServerSettings:
    """One upstream MCP server: Streamable HTTP at ``target`` + ``path`` (the target's
    credential: JWT-SVID, mTLS, bearer from a file), or stdio: ``command``, started and
    supervised by the sidecar, secrets from ``env_files`` (never from the agent)."""

    target: str = ""
    path: str = "/mcp"
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # NAME -> file: the variable's value is the file's content (a mounted Secret).
    env_files: Mapping[str, Path] = field(default_factory=dict)
    cwd: Path | None = None
    timeout_s: float = 30.0
    tools: Mapping[str, McpToolSettings] = field(default_factory=dict)
    restart: McpRestartSettings = field(default_factory=McpRestartSettings)
    # Upper bounds on what the server may list (it is not trusted).
    max_tools: int = 1000
    # HTTP: the protocol revision spoken to it. auto: the stateless one (2026-07-28) when
    # its server/discover offers it, else the handshake (2025-11-25). stdio: handshake.
    revision: Literal["auto", "handshake", "stateless"] = "auto"
    # Its lists are read again at least this often (and a tool whose definition changed
    # without a list_changed is then hidden and denied): how long a silent change can last.
    refresh_s: float = 60.0

    def __post_init__(self) -> None:
        _check(
            bool(self.target) != bool(self.command),
            "target or command: exactly one (Streamable HTTP at a target, or a stdio command)",
        )
        _check(self.path.startswith("/"), f"path: {self.path!r} must start with '/'")
        if self.target:
            _check(not self.env and not self.env_files, "env, env_files: only for a command")
        else:
            _check(self.revision != "stateless", "revision: stdio servers use the handshake")
        for name in [*self.env, *self.env_files]:
            _check(_ENV_NAME_RE.match(name) is not None, f"env: {name!r} is not a variable name")
        both = set(self.env) & set(self.env_files)
        _check(not both, f"env_files: {sorted(both)[0] if both else ''!r} is also in env")
        _check(self.timeout_s > 0, "timeout_s: must be > 0")
        _check(self.max_tools >= 1, "max_tools: must be >= 1")
        _check(
            MIN_REFRESH_S <= self.refresh_s <= MAX_REFRESH_S,
            f"refresh_s: must be between {MIN_REFRESH_S} and {MAX_REFRESH_S:.0f} seconds "
            "(how long a definition changed without notice can go unseen)",
        )
        for tool in self.tools:
            _check(bool(tool) and "/" not in tool, f"tools: {tool!r} is not a tool name")

    @property
    def transport(self) -> str:
        return "http" if self.target else "stdio"
