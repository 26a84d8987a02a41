"""The ``server`` section: the agent-facing gRPC listener (served by ``sidecar.server``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sidecar.validate import MIB, check, check_address

__all__ = ["DEFAULT_AGENT_SOCKET", "MAX_WORKERS", "ServerSettings"]


# The agent API's default listener: a unix socket (docs/identity.md).
DEFAULT_AGENT_SOCKET = "unix:///run/agent-sidecar/agent.sock"
# The most worker processes: ``workers: auto`` on a larger node is capped here (and says so).
MAX_WORKERS = 64


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
    # Processes serving the TCP listeners (SO_REUSEPORT). 1 (the default; 0 means 1 too, with
    # a warning: it used to mean one per CPU): one process, no supervisor, the smallest
    # footprint (docs/performance.md). N > 1: a supervisor and N workers. "auto": one per CPU
    # available to the container (cgroup quota honoured, rounded up), at most MAX_WORKERS
    # (sidecar.workers.planned_workers logs the cap). Unix listeners are served by worker 0
    # alone, so with no TCP listener (gRPC or front door) only 1 is possible, and "auto"
    # means 1 (sidecar.workers).
    workers: int | Literal["auto"] = 1

    def __post_init__(self) -> None:
        check(len(self.listen) > 0, "listen: at least one address is required")
        for address in self.listen:
            check_address(address)
        check(
            self.workers == "auto" or 0 <= self.workers <= MAX_WORKERS,
            f"workers: {self.workers!r} must be between 0 and {MAX_WORKERS} (0 and 1: one "
            "process), "
            "or auto (one per CPU)",
        )
        check(
            re.fullmatch(r"0?[0-7]{3}", self.socket_mode) is not None
            and int(self.socket_mode, 8) & 0o007 == 0,
            f"socket_mode: {self.socket_mode!r} must be octal like 0660 and give others nothing",
        )
        check(self.max_request_bytes > 0, "max_request_bytes: must be > 0")
        check(self.grace_s >= 0, "grace_s: must be >= 0")
        if self.health_listen:
            _, sep, port = self.health_listen.rpartition(":")
            check(
                bool(sep) and port.isdigit(),
                f"health_listen: {self.health_listen!r} is not HOST:PORT",
            )
