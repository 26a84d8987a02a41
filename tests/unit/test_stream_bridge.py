"""The bounded hand-off behind StreamModel and StreamPeer (sidecar/stream_bridge.py): a reader that
stops reading holds the producer back at ``size`` events instead of letting the sidecar buffer
the whole upstream answer; events keep their order; the producer's end (or failure) ends the
reading without ever blocking on a full queue."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.stream_bridge import StreamBridge


async def _steps(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # event-loop turns, not time


def test_review_s9_stream_a_reader_that_stops_holds_the_producer_at_size_events() -> None:
    async def run() -> None:
        bridge = StreamBridge(size=4)
        produced = 0

        async def produce() -> None:
            nonlocal produced
            for i in range(1000):
                await bridge.put("chunk", i)
                produced += 1

        producer = asyncio.ensure_future(produce())
        await _steps()
        assert produced == 4 and bridge.waiting == 4 and not producer.done()
        got = []
        async for kind, value in bridge.events(producer):
            assert kind == "chunk"
            got.append(value)
            assert bridge.waiting <= 4
        assert got == list(range(1000)) and producer.done()

    asyncio.run(run())


def test_review_s9_stream_the_end_is_seen_through_the_producer_even_when_full() -> None:
    async def run() -> None:
        bridge = StreamBridge(size=2)

        async def produce() -> str:
            await bridge.put("start", "d")
            await bridge.put("chunk", 1)
            return "done"  # ends with a full queue: nothing more to put

        producer = asyncio.ensure_future(produce())
        events = [e async for e in bridge.events(producer)]
        assert events == [("start", "d"), ("chunk", 1)] and producer.result() == "done"

    asyncio.run(run())


def test_review_s9_stream_a_failing_producer_ends_the_reading_and_keeps_its_error() -> None:
    async def run() -> None:
        bridge = StreamBridge()

        async def produce() -> None:
            await bridge.put("chunk", 1)
            raise RuntimeError("upstream died")

        producer = asyncio.ensure_future(produce())
        events = [e async for e in bridge.events(producer)]
        assert events == [("chunk", 1)]
        with pytest.raises(RuntimeError, match="upstream died"):
            producer.result()

    asyncio.run(run())


def test_review_s9_stream_a_reader_that_goes_away_leaves_no_pending_getter() -> None:
    async def run() -> None:
        bridge = StreamBridge()
        never = asyncio.get_running_loop().create_future()
        reader = asyncio.ensure_future(anext(bridge.events(never)))
        await _steps()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await bridge.put("chunk", 1)  # nothing consumed it behind the reader's back
        assert bridge.waiting == 1
        never.cancel()

    asyncio.run(run())


def test_review_s9_stream_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        StreamBridge(size=0)


def test_review_s9_stream_close_releases_a_producer_and_drops_later_events() -> None:
    """A cancelled call's clean-up may emit one more event (a redactor's held tail): once the
    reader is gone it must not wait for it (the sidecar's stop would hang on the drain)."""

    async def run() -> None:
        bridge = StreamBridge(size=1)
        await bridge.put("chunk", 1)
        blocked = asyncio.ensure_future(bridge.put("chunk", 2))
        await _steps()
        assert not blocked.done()
        bridge.close()
        await asyncio.wait_for(blocked, 30)  # released, not left waiting
        for i in range(100):
            await bridge.put("chunk", i)  # never waits: nobody reads any more
        assert bridge.waiting <= 1

    asyncio.run(run())
