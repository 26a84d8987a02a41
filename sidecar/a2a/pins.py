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

__all__ = ["PIN_CACHE_S", "CardPin", "CardPinStore", "PinCache"]

# How long a worker serves a pin from memory before reading the state store again: the bound
# on how late a pin accepted on another worker (or replica) is seen here. This worker's own
# accepts and first pins replace its entry at once.
PIN_CACHE_S = 1.0


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


class PinCache:
    """The pins a worker read, each for at most ``max_age_s`` (the state store is shared
    with other workers, whose accepts reach this one no later than that).

    Correct only while every read and write of pins runs on the one state thread
    (``STATE_THREAD``, first in first out): a read that started before an accept then cannot
    put the old pin back after it."""

    def __init__(self, max_age_s: float = PIN_CACHE_S) -> None:
        self._max_age_s = max_age_s
        self._entries: dict[str, tuple[float, CardPin]] = {}

    def get(self, peer: str) -> CardPin | None:
        """The pin read less than ``max_age_s`` ago (None: read the store)."""
        entry = self._entries.get(peer)
        if entry is None or time.monotonic() - entry[0] >= self._max_age_s:
            return None
        return entry[1]

    def put(self, pin: CardPin | None, peer: str) -> None:
        if pin is None:
            self._entries.pop(peer, None)
        else:
            self._entries[peer] = (time.monotonic(), pin)
