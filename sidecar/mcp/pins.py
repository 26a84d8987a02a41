"""Tool-definition pins (rug-pull and tool-poisoning defence): the hash of each upstream
tool's definition when the sidecar first listed it, kept in the state database. A later
definition with another hash is *changed* until an operator accepts it
(``agent-sidecar mcp accept SERVER.TOOL``); policy sees both hashes and decides.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sidecar.state import StateDb

__all__ = ["DEFINITION_FIELDS", "Pin", "PinStore", "definition_hash"]

# What a definition is: what the agent's model reads and what shapes its calls.
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_hash(tool: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the definition's fields (the upstream's own name)."""
    doc = {k: tool[k] for k in DEFINITION_FIELDS if k in tool}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Pin:
    name: str
    hash: str
    pinned_ns: int
    pinned_by: str


class PinStore:
    """Pins by full tool name (``SERVER.tool``). Blocking: call it off the event loop."""

    def __init__(self, db: StateDb) -> None:
        self._db = db

    def all(self) -> dict[str, Pin]:
        rows = self._db.query("SELECT name, hash, pinned_ns, pinned_by FROM mcp_pins")
        return {r["name"]: Pin(r["name"], r["hash"], r["pinned_ns"], r["pinned_by"]) for r in rows}

    def pin_new(self, hashes: dict[str, str]) -> dict[str, Pin]:
        """Pin each name not pinned yet to its hash (first seen wins, across processes);
        return every pin of these names."""
        now = time.time_ns()
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO mcp_pins (name, hash, pinned_ns, pinned_by) "
                "VALUES (?, ?, ?, 'first-seen') ON CONFLICT (name) DO NOTHING",
                [(name, digest, now) for name, digest in hashes.items()],
            )
        return {name: pin for name, pin in self.all().items() if name in hashes}

    def accept(self, name: str, digest: str, by: str) -> Pin:
        """Pin ``name`` to ``digest`` (an operator accepted the definition)."""
        pin = Pin(name, digest, time.time_ns(), by)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO mcp_pins (name, hash, pinned_ns, pinned_by) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET hash = excluded.hash, "
                "pinned_ns = excluded.pinned_ns, pinned_by = excluded.pinned_by",
                (pin.name, pin.hash, pin.pinned_ns, pin.pinned_by),
            )
        return pin
