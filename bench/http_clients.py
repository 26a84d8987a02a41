"""Why aiohttp: the asyncio HTTP clients a relay could use, on the same fast upstream
(bench/upstream.py), side by side in one run: one keep-alive pool each, sequential calls
(latency) and 16 concurrent callers (throughput). ``requests`` in a thread pool is what the
relay used before. httpx is measured when installed (it is not a dependency).

    python bench/http_clients.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay_overhead import percentile  # noqa: E402
from examples.demo.run import free_port  # noqa: E402


async def run(call, calls: int, concurrency: int) -> tuple[float, float]:
    """p50 (µs) and calls/s."""
    latencies: list[float] = []
    todo = iter(range(calls))

    async def caller() -> None:
        for _ in todo:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1e6)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return percentile(latencies, 50), calls / (time.perf_counter() - started)


async def measure(url: str, calls: int) -> list[tuple[str, float, float, float]]:
    rows = []
    async with aiohttp.ClientSession() as session:

        async def aiohttp_call() -> None:
            async with session.get(url) as response:
                await response.read()

        rows.append(("aiohttp", aiohttp_call))
        clients = [session]
        try:
            import httpx

            client = httpx.AsyncClient()
            clients.append(client)

            async def httpx_call() -> None:
                (await client.get(url)).read()

            rows.append(("httpx", httpx_call))
        except ImportError:
            pass
        pool = ThreadPoolExecutor(16)
        local = requests.Session()

        async def requests_call() -> None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, lambda: local.get(url).content)

        rows.append(("requests in threads", requests_call))
        out = []
        for name, call in rows:
            await run(call, 200, 4)  # warm up
            p50, _ = await run(call, calls, 1)
            _, throughput = await run(call, calls, 16)
            out.append((name, p50, throughput))
        for client in clients[1:]:
            await client.aclose()
        pool.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/upstream.py"), "--port", str(port)]
    )
    try:
        for _ in range(200):
            try:
                requests.get(f"http://127.0.0.1:{port}/tickets/7", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        rows = asyncio.run(measure(f"http://127.0.0.1:{port}/tickets/7", args.calls))
    finally:
        upstream.terminate()
    print(f"{'client':<22} {'p50 us (c=1)':>13} {'calls/s (c=16)':>15}")
    for name, p50, throughput in rows:
        print(f"{name:<22} {p50:>13.0f} {throughput:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
