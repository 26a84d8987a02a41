"""The fleet state store, side by side in one run (``make bench``): what sharing state on
PostgreSQL costs and what it guarantees, with real ``agent-sidecar serve`` processes.

1. Check and CallTool throughput under a task (each call reads and counts the task in the
   store), 8 concurrent callers, one sidecar with the SQLite store vs one with PostgreSQL.
2. Approval-to-relay latency across replicas: a call waits on replica 1, the approval is
   granted on replica 0; from the grant's commit to the relayed answer.
3. Task revocation across replicas: ending a task on replica 0 until replicas 1 and 2 have
   revoked what they hold for it (their log lines' timestamps).
4. Budget overshoot: 50 concurrent model calls on 3 replicas against a 1,000-token task
   budget (each reserves 125 tokens and really uses 61).

    python bench/fleet_state.py [--calls 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402
from tests.support.fleet import chat_at_once, fleet_config, poll, start_replicas  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

REFUND = {"order": "A-1", "amount": 500}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def server_pids(server: PostgresServer) -> list[int]:
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *map(int, children)]


def throughput(replica, calls: int, method: str) -> tuple[float, float]:
    with replica.client() as client:
        task = client.start_task("bench", ttl_s=3600).task_id
    per = calls // 8
    latencies: list[float] = []

    def run(_: int) -> None:
        with SidecarClient(replica.address, timeout_s=30) as client:
            call = client.check if method == "Check" else client.call_tool
            for _ in range(per):
                t = time.perf_counter()
                call("tickets.get", {"id": "7"}, task_id=task)
                latencies.append(time.perf_counter() - t)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(8)))  # warm up
        latencies.clear()
        start = time.perf_counter()
        list(pool.map(run, range(8)))
        elapsed = time.perf_counter() - start
    return per * 8 / elapsed, pct(latencies, 0.99) * 1000


def approval_to_relay(fleet, rounds: int) -> list[float]:
    a, b = fleet[0], fleet[1]
    out = []
    with a.client() as client:
        task = client.start_task("bench", ttl_s=3600).task_id
    for i in range(rounds):
        args = REFUND | {"order": f"A-{i}"}
        done: dict[str, float] = {}

        def wait_on_b(args=args, done=done) -> None:
            with b.client(timeout_s=60) as client:
                client.call_tool("payments.refund", args, task_id=task)
                done["at"] = time.perf_counter()

        waiter = threading.Thread(target=wait_on_b)
        waiter.start()
        with a.approvals() as approvals:
            pending = poll(lambda approvals=approvals: approvals.list(["pending"]))
            approvals.approve(pending[0].id, reason="bench")
            granted = time.perf_counter()
        waiter.join(60)
        out.append((done["at"] - granted) * 1000)
    return out


def revocation(fleet) -> list[float]:
    with fleet[0].client() as client:
        task = client.start_task("bench").task_id
    with fleet[1].client() as client:
        client.call_tool("tickets.get", {"id": "7"}, task_id=task)
    ended = time.time()
    with fleet[0].client() as client:
        client.end_task(task)
    out = []
    for replica in fleet[1:]:
        line = poll(
            lambda r=replica: next(
                (x for x in r.log_lines() if x.get("task_id") == task and "another" in x["msg"]),
                None,
            )
        )
        at = datetime.datetime.fromisoformat(line["ts"]).timestamp()
        out.append((at - ended) * 1000)
    return out


def overshoot(tmp: Path, tools: ToolServer, pg_state: dict) -> tuple[int, int]:
    with ModelServer() as models:
        models.script(reply="ok")
        fleet = start_replicas(tmp, 3, lambda h: fleet_config(h, tools.url, pg_state, models.url))
        try:
            with fleet[0].client() as client:
                task = client.start_task("bench").task_id
            relayed = chat_at_once(fleet, task, 50).count("ok")
            return relayed, relayed * 61
        finally:
            for replica in fleet:
                replica.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    server = PostgresServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        with ToolServer() as tools:

            def pg(name: str) -> dict:
                (tmp / f"{name}.dsn").write_text(server.create_database(name))
                return {"backend": "postgres", "postgres": {"dsn_file": str(tmp / f"{name}.dsn")}}

            print(f"fleet state (PostgreSQL 15 on loopback; {args.calls} calls, 8 callers)")
            sqlite = start_replicas(tmp / "sqlite", 1, lambda h: fleet_config(h, tools.url, {}))
            state_a = pg("a")
            shared = start_replicas(tmp / "pg1", 1, lambda h: fleet_config(h, tools.url, state_a))
            try:
                # Alternated, twice each: the better run of each, and CPU per call measured
                # from /proc (the sidecar process; PostgreSQL's own processes apart).
                for method in ("Check", "CallTool"):
                    best: dict[str, tuple[float, float, float, float]] = {}
                    for name, fleet in (("sqlite", sqlite), ("postgres", shared)) * 2:
                        pids = [fleet[0].proc.pid]
                        before = cpu_s(pids), cpu_s(server_pids(server))
                        rate, p99 = throughput(fleet[0], args.calls, method)
                        spent = cpu_s(pids) - before[0], cpu_s(server_pids(server)) - before[1]
                        per_call = [x / (2 * args.calls) * 1000 for x in spent]  # with warm-up
                        if rate > best.get(name, (0.0,))[0]:
                            best[name] = (rate, p99, *per_call)
                    for name, (rate, p99, own, db) in best.items():
                        database = f", PostgreSQL {db:.2f} ms" if name == "postgres" else ""
                        print(
                            f"  {method:<9} {name:<9} {rate:7.0f} calls/s   p99 {p99:6.2f} ms   "
                            f"CPU/call: sidecar {own:.2f} ms{database}"
                        )
            finally:
                for replica in sqlite + shared:
                    replica.stop()
            state_b = pg("b")
            fleet = start_replicas(tmp / "pg3", 3, lambda h: fleet_config(h, tools.url, state_b))
            try:
                lat = approval_to_relay(fleet, args.rounds)
                print(
                    f"  approval-to-relay across replicas ({args.rounds} rounds): "
                    f"p50 {pct(lat, 0.5):.1f} ms, max {max(lat):.1f} ms"
                )
                rev = revocation(fleet)
                print(
                    "  task end on replica 0 -> revoked on replicas 1, 2: "
                    + ", ".join(f"{x:.1f} ms" for x in rev)
                )
            finally:
                for replica in fleet:
                    replica.stop()
            state_c = pg("c")
            relayed, charged = overshoot(tmp / "budget", tools, state_c)
            print(
                f"  budget 1000 tokens, 50 concurrent calls on 3 replicas: {relayed} relayed, "
                f"{charged} charged, overshoot {max(0, charged - 1000)} (one estimate: 125)"
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
