"""Waiting without asserting any duration: for a condition (``poll``; ``apoll`` on a running
event loop, which keeps running meanwhile) or for a counter to stop moving (``settled``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["apoll", "poll", "settled"]


def poll(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """``predicate()`` once it is truthy, polled every 10 ms within a generous bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


async def apoll(
    predicate: Callable[[], Any], timeout_s: float = 120.0, what: str = "condition"
) -> Any:
    """``poll`` for a coroutine: ``predicate()`` once it is truthy, checked every 5 ms while the
    event loop goes on running its callbacks and tasks, within a generous bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.005)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


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
