"""State work off the event loop: one thread for every call to the state database.

Here, beside the database, so that every layer above it (approvals, MCP, calls, AuthZEN)
shares the one thread without importing the calls package.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["STATE_THREAD", "off_loop"]

# One thread for state work: the database serialises its writes anyway, and one worker spares
# the hand-offs between several threads contending for its lock.
STATE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")


async def off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """State work runs in a thread: a locked database (SQLite's busy wait) may stall the calls
    that need it, never the event loop and the calls that do not."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(STATE_THREAD, functools.partial(fn, *args, **kwargs))
