"""A real OPA control-plane receiver for tests: aiohttp on loopback taking OPA's decision-log
batches (``POST /logs``, gzip-compressed JSON arrays) and status reports (``POST /status``).

``fail(n, status)`` answers the next ``n`` requests with ``status`` (500 by default);
``hang()`` holds every request until ``release()`` (a receiver that accepts and never
answers); ``stop()`` takes it down. JSON is parsed strictly, as Go's encoding/json does:
Infinity, NaN or an invalid body is answered 400 (counted in ``rejected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from typing import Any

from aiohttp import web

__all__ = ["OpaReceiver"]

HOLD_LIMIT_S = 60.0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Python's json accepts Infinity and NaN; Go's (OPA's receivers) refuses them."""
    return json.loads(raw, parse_constant=_no_constant)


class OpaReceiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []  # every decision-log event, in arrival order
        self.batches: list[list[dict[str, Any]]] = []
        self.statuses: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str], int]] = []  # path, headers, body bytes
        self.sizes: list[tuple[int, int]] = []  # (bytes on the wire, bytes inflated)
        self.failures_left = 0
        self.failed = 0
        self.fail_status = 500
        self.rejected = 0
        self.held = 0
        self._released: asyncio.Event | None = None
        self._hanging = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._released = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/logs", self._logs)
        app.router.add_post("/logs/{partition}", self._logs)
        app.router.add_post("/status", self._status)
        app.router.add_post("/status/{partition}", self._status)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _gate(self, request: web.Request) -> web.Response | None:
        body = await request.read()
        with self.lock:
            self.requests.append((request.path, dict(request.headers), len(body)))
        if self._hanging:
            with self.lock:
                self.held += 1
            assert self._released is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), HOLD_LIMIT_S)
        with self.lock:
            if self.failures_left > 0:
                self.failures_left -= 1
                self.failed += 1
                return web.Response(status=self.fail_status, text="failing on purpose")
        return None

    async def _logs(self, request: web.Request) -> web.Response:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        raw = await request.read()
        assert request.headers.get("Content-Encoding") == "gzip", request.headers
        # aiohttp inflates a gzip request body itself; the wire size is the header's.
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        with self.lock:
            self.sizes.append((request.content_length or 0, len(raw)))
        try:
            batch = strict_json(raw)
        except ValueError:
            with self.lock:
                self.rejected += 1
            return web.Response(status=400, text="not JSON")
        with self.lock:
            self.batches.append(batch)
            self.events.extend(batch)
        return web.Response(status=204)

    async def _status(self, request: web.Request) -> web.Response:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        try:
            doc = strict_json(await request.read())
        except ValueError:
            with self.lock:
                self.rejected += 1
            return web.Response(status=400, text="not JSON")
        with self.lock:
            self.statuses.append(doc)
        return web.Response(status=200)

    def fail(self, n: int, status: int = 500) -> None:
        with self.lock:
            self.failures_left = n
            self.fail_status = status

    def hang(self) -> None:
        self._hanging = True

    def release(self) -> None:
        self._hanging = False
        assert self._released is not None
        self.loop.call_soon_threadsafe(self._released.set)

    def snapshot_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def snapshot_statuses(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.statuses)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.release()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
