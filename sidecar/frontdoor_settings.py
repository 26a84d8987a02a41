"""The ``frontdoor`` section: the OpenAI-compatible listener (``sidecar.frontdoor``)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.validate import MIB, check, is_local_address

__all__ = ["FrontDoorSettings"]


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
            check(bool(sep) and port.isdigit(), f"listen: {self.listen!r} is not HOST:PORT")
            check(
                is_local_address(self.listen) and not self.listen.startswith("unix:"),
                f"listen: {self.listen!r} is not a loopback HOST:PORT (the front door is "
                "unencrypted HTTP for the agent in the same pod)",
            )
        check(self.wait_for_approval_s >= 0, "wait_for_approval_s: must be >= 0")
        check(self.max_request_bytes > 0, "max_request_bytes: must be > 0")
        check(self.read_timeout_s > 0, "read_timeout_s: must be > 0")
        check(self.max_connections >= 1, "max_connections: must be >= 1")
