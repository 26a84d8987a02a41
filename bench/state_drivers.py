"""How the PostgreSQL drivers compare on the state store's own work (docs/dependencies.md).

Against a throwaway PostgreSQL on this machine: the budget reservation (lock the task row,
read, update, commit) and a task read, one at a time and from 8 concurrent callers, with
psycopg 3 (sync, its pool, the callers in threads: how the stores call it) and asyncpg
(its pool, the callers as coroutines). Side by side in one run.

    pip install asyncpg==0.32.0   # not a dependency: only this comparison uses it
    python bench/state_drivers.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from tests.support.postgres import PostgresServer  # noqa: E402

SETUP = """
CREATE TABLE tasks (id TEXT PRIMARY KEY, tokens BIGINT NOT NULL DEFAULT 0, calls BIGINT NOT
NULL DEFAULT 0);
INSERT INTO tasks (id) SELECT 't' || g FROM generate_series(1, 64) g;
"""


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def report(name: str, latencies: list[float], elapsed: float) -> None:
    print(
        f"  {name:<34} p50 {p(latencies, 0.5):6.3f} ms  p99 {p(latencies, 0.99):6.3f} ms  "
        f"{len(latencies) / elapsed:8.0f}/s"
    )


def bench_psycopg(dsn: str, n: int, concurrency: int) -> None:
    pool = psycopg_pool.ConnectionPool(
        dsn, min_size=concurrency, max_size=concurrency, open=True,
        kwargs={"autocommit": True, "row_factory": dict_row},
    )  # fmt: skip
    pool.wait()

    def reserve(i: int) -> float:
        t = time.perf_counter()
        with pool.connection() as conn, conn.transaction():
            key = f"t{i % 64 + 1}"
            conn.execute("SELECT tokens FROM tasks WHERE id = %s FOR UPDATE", (key,)).fetchone()
            conn.execute("UPDATE tasks SET tokens = tokens + 1 WHERE id = %s", (key,))
        return time.perf_counter() - t

    def read(i: int) -> float:
        t = time.perf_counter()
        with pool.connection() as conn:
            conn.execute("SELECT * FROM tasks WHERE id = %s", (f"t{i % 64 + 1}",)).fetchone()
        return time.perf_counter() - t

    for name, fn in (("reserve", reserve), ("read", read)):
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(fn, range(200)))  # warm up (prepared statements)
            t = time.perf_counter()
            lat = list(ex.map(fn, range(n)))
            report(f"psycopg 3, {name}, c={concurrency}", lat, time.perf_counter() - t)
    pool.close()


async def bench_asyncpg(dsn: str, n: int, concurrency: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)

    async def reserve(i: int) -> float:
        t = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            key = f"t{i % 64 + 1}"
            await conn.fetchrow("SELECT tokens FROM tasks WHERE id = $1 FOR UPDATE", key)
            await conn.execute("UPDATE tasks SET tokens = tokens + 1 WHERE id = $1", key)
        return time.perf_counter() - t

    async def read(i: int) -> float:
        t = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", f"t{i % 64 + 1}")
        return time.perf_counter() - t

    for name, fn in (("reserve", reserve), ("read", read)):
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, fn=fn, sem=sem) -> float:
            async with sem:
                return await fn(i)

        await asyncio.gather(*(one(i) for i in range(200)))
        t = time.perf_counter()
        lat = await asyncio.gather(*(one(i) for i in range(n)))
        report(f"asyncpg, {name}, c={concurrency}", list(lat), time.perf_counter() - t)
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        dsn = server.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in SETUP.split(";"):
                if statement.strip():
                    conn.execute(statement)
        print(f"state drivers, n={args.n} per row, PostgreSQL 15 on loopback (this machine)")
        for concurrency in (1, 8):
            bench_psycopg(dsn, args.n, concurrency)
            asyncio.run(bench_asyncpg(dsn, args.n, concurrency))
    finally:
        server.close()


if __name__ == "__main__":
    main()
