"""Decision ids: ULIDs, so they sort by time in audit logs and carry no secret."""

from __future__ import annotations

import os
import time

__all__ = ["new_decision_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32


def new_decision_id(now_ns: int | None = None) -> str:
    """Return a 26-character ULID: 48 bits of milliseconds, then 80 random bits."""
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
