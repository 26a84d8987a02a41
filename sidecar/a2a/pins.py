"""A2A card pins: per peer, the digest of the card the sidecar trusts and that card itself,
kept in the state database (SQLite or PostgreSQL, table ``a2a_card_pins``). The first
verified card seen is pinned (first seen wins, across replicas); a later card with another
digest is *changed* until an operator accepts it (``agent-sidecar a2a accept``). The pinned
card is stored whole: after a restart the agent and policy still see the accepted skills
while the peer serves an unaccepted card.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sidecar.state import StateDb

__all__ = ["CardPin", "CardPinStore"]


@dataclass(frozen=True)
class CardPin:
    peer: str
    digest: str
    card: dict[str, Any]
    pinned_ns: int
    pinned_by: str


def _pin(row: Any) -> CardPin:
    return CardPin(
        row["peer"], row["digest"], json.loads(row["card"]), row["pinned_ns"], row["pinned_by"]
    )


class CardPinStore:
    """Pins by peer name. Blocking: call it off the event loop."""

    def __init__(self, db: StateDb) -> None:
        self._db = db

    def all(self) -> dict[str, CardPin]:
        rows = self._db.query("SELECT peer, digest, card, pinned_ns, pinned_by FROM a2a_card_pins")
        return {r["peer"]: _pin(r) for r in rows}

    def get(self, peer: str) -> CardPin | None:
        rows = self._db.query(
            "SELECT peer, digest, card, pinned_ns, pinned_by FROM a2a_card_pins WHERE peer = ?",
            (peer,),
        )
        return _pin(rows[0]) if rows else None

    def pin_first(self, peer: str, digest: str, card: dict[str, Any]) -> CardPin:
        """Pin ``peer`` to this card unless it is pinned already; return its pin."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO a2a_card_pins (peer, digest, card, pinned_ns, pinned_by) "
                "VALUES (?, ?, ?, ?, 'first-seen') ON CONFLICT (peer) DO NOTHING",
                (peer, digest, json.dumps(card, sort_keys=True), time.time_ns()),
            )
        pin = self.get(peer)
        assert pin is not None
        return pin

    def accept(self, peer: str, digest: str, card: dict[str, Any], by: str) -> CardPin:
        """Pin ``peer`` to this card (an operator accepted it)."""
        pin = CardPin(peer, digest, card, time.time_ns(), by)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO a2a_card_pins (peer, digest, card, pinned_ns, pinned_by) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (peer) DO UPDATE SET "
                "digest = excluded.digest, card = excluded.card, "
                "pinned_ns = excluded.pinned_ns, pinned_by = excluded.pinned_by",
                (peer, digest, json.dumps(card, sort_keys=True), pin.pinned_ns, by),
            )
        return pin
