"""One entry of the aggregated MCP lists (a tool, prompt, resource or template) as the agent
sees it and policy is told about it, and the naming rule ``SERVER.name``. Free of the MCP
types on purpose: the guarded path imports it whether or not MCP is configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "split_name"]


def split_name(full: str) -> tuple[str, str]:
    """``SERVER.rest`` -> (SERVER, rest); server names hold no dot, so the first one splits."""
    server, sep, rest = full.partition(".")
    return (server, rest) if sep and rest else ("", "")


@dataclass(frozen=True)
class Entry:
    """One tool, prompt, resource or template as the agent sees it (``body``)."""

    kind: str
    server: str
    name: str  # the upstream's own name (or URI)
    full: str  # SERVER.name
    body: dict[str, Any]
    operation: str = "read"
    annotations: Mapping[str, Any] = field(default_factory=dict)
    hash: str = ""
    pinned_hash: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.pinned_hash) and self.hash != self.pinned_hash

    def definition(self) -> dict[str, Any] | None:
        if self.kind != "tool":
            return None
        return {"hash": self.hash, "pinned_hash": self.pinned_hash, "changed": self.changed}
