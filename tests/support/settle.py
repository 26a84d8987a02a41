"""Waiting for a counter to stop moving, without asserting any duration."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["settled"]


def settled(read: Callable[[], int], polls: int = 25, bound: int = 3000) -> int:
    """``read()`` once it has stopped changing for ``polls`` polls in a row (20 ms apart), or
    after ``bound`` polls: how far a producer got once back-pressure held it."""
    last, same = -1, 0
    for _ in range(bound):
        now = read()
        same = same + 1 if now == last else 0
        if same >= polls:
            return now
        last = now
        time.sleep(0.02)
    return read()
