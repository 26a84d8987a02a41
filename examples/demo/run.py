"""`make demo`: one agent, its sidecar and a tool upstream, end to end on this machine.

Starts the example tool upstream, writes a config into ./demo-out, starts
``agent-sidecar serve`` as its own process, waits until its gRPC health check says SERVING,
runs the scripted agent, prints one line per call and where the audit log is, then stops
everything. Exits non-zero if any call's effect differs from what the baseline policy should
decide, so the demo doubles as a smoke test.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples.demo.agent import run as run_agent  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402

OUT = ROOT / "demo-out"


def write_config(tools_url: str) -> tuple[Path, str]:
    config = yaml.safe_load((ROOT / "examples/demo/config.yaml").read_text())
    socket = Path("/tmp") / f"agent-sidecar-demo-{int(time.time() * 1000)}" / "agent.sock"
    config["server"]["listen"] = [f"unix://{socket}"]
    config["policy"]["dir"] = str(ROOT / "rego")
    config["audit"]["path"] = str(OUT / "audit.log")
    for target in config["targets"].values():
        target["base_url"] = tools_url
    path = OUT / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, f"unix:{socket}"


def wait_serving(address: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the sidecar exited early (status {proc.returncode})")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit("the sidecar did not become ready in time")


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    with ToolServer() as tools:
        config, address = write_config(tools.url)
        log = (OUT / "sidecar.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_serving(address, proc)
            print(f"sidecar serving on {address}; tool upstream on {tools.url}\n")
            print(f"{'TOOL':<16} {'EFFECT':<8} {'DECISION ID':<26}  REASONS")
            lines = run_agent(address)
            for line in lines:
                print(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            log.close()
        notified = [r.json() for r in tools.received if r.path == "/notify"]
    audit = (OUT / "audit.log").read_text().splitlines()
    print(f"\nupstream received {len(tools.received)} requests for {len(lines)} calls")
    if notified:
        print(f"partner.notify as the partner received it: {json.dumps(notified[0])}")
    print(f"audit log: {OUT / 'audit.log'} ({len(audit)} records)")
    print(f"sidecar log: {OUT / 'sidecar.log'}")
    wrong = [line for line in lines if line.effect != line.expected]
    if wrong or len(audit) != len(lines):
        print("demo FAILED: a decision or the audit log is not what it should be", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
