"""A bounded hand-off from a call that produces events to the gRPC response that sends them.

A streamed gRPC answer (``StreamModel``, ``StreamPeer``) is produced by one task (the guarded
call relaying the upstream) and consumed by the response iterator. With an unbounded queue a
slow agent makes the sidecar hold the whole upstream answer in memory; here the producer's
``put`` waits once ``size`` events are queued, so a slow reader holds the relay back (and with
it the upstream, through TCP flow control) instead. The producer's end is seen through its task,
never through the queue, so finishing can never block on a full queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

__all__ = ["DEFAULT_SIZE", "InFlight", "StreamBridge", "finish"]

DEFAULT_SIZE = 32  # events held for a slow reader; the relay waits beyond this


class StreamBridge:
    """Events of one streamed call, at most ``size`` waiting for the reader."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("a stream bridge holds at least one event")
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=size)
        self._closed = False

    async def put(self, kind: str, value: Any) -> None:
        """Queue one event; waits while ``size`` are already waiting for the reader. Once the
        reader is gone (:meth:`close`) the event is dropped: a cancelled call's clean-up (a
        redactor's held tail, say) must never wait for a reader that will not come."""
        if not self._closed:
            await self._queue.put((kind, value))

    def close(self) -> None:
        """The reader is gone: drop what waits and release every producer waiting to put."""
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()  # each get wakes one waiting ``put``

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def events(self, producer: asyncio.Future[Any]) -> AsyncIterator[tuple[str, Any]]:
        """Every queued event in order, until ``producer`` is done and nothing is left."""
        while True:
            if not self._queue.empty():
                yield self._queue.get_nowait()
                continue
            if producer.done():
                return
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                yield getter.result()


async def finish(producer: asyncio.Future[Any]) -> None:
    """Cancel ``producer`` if it still runs and wait until it has ended (its exception is left
    on it): the call's audit record is written before the RPC ends, so a sidecar stopping
    after its gRPC server never closes the audit log under a call still writing."""
    if not producer.done():
        producer.cancel()
    await asyncio.wait({producer})


class InFlight:
    """The streamed calls a door has running. gRPC's ``server.stop`` cancels a streaming handler
    without waiting for what its ``finally`` awaits, so the sidecar drains these after stopping
    the server and before closing the audit log: every call's record is written."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def start(self, call: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Cancel what still runs and wait until all of it has ended."""
        for task in list(self._tasks):
            await finish(task)
