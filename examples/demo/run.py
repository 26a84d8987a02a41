"""`make demo`: one agent, its sidecar and a tool upstream, end to end on this machine.

Starts a development SPIFFE Workload API (``agent-sidecar dev workload-api``) that issues the
pod's SVID, the example tool upstream, writes a config into ./demo-out, starts
``agent-sidecar serve`` (identity mode ``pod``) as its own process, waits until its gRPC health
check says SERVING (it does once the first SVID has arrived),
runs the scripted agent, prints one line per call and where the audit log is, then stops
everything. Exits non-zero if any call's effect differs from what the baseline policy should
decide, so the demo doubles as a smoke test.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import requests
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples.demo.agent import run as run_agent  # noqa: E402
from examples.demo.agent import run_anthropic as run_anthropic_agent  # noqa: E402
from examples.demo.agent import run_mcp as run_mcp_agent  # noqa: E402
from examples.demo.agent import run_models as run_model_agent  # noqa: E402
from examples.demo.agent import run_responses as run_responses_agent  # noqa: E402
from examples.demo.anthropic_server import AnthropicServer  # noqa: E402
from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402
from sidecar.workers import segments  # noqa: E402

OUT = ROOT / "demo-out"


RUN_DIR = Path("/tmp") / f"agent-sidecar-demo-{int(time.time() * 1000)}"
WORKLOAD_SOCKET = RUN_DIR / "workload.sock"
SPIFFE_ID = "spiffe://demo.example/agent/support"
APPROVALS_SOCKET = RUN_DIR / "approvals.sock"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN_PORT = free_port()


FRONTDOOR_PORT = free_port()
MCP_PORT = free_port()
# Stands in for the provider's key Secret; the agent never sees it.
PROVIDER_KEY = "sk-demo-provider-key-0123456789abcdef"
ANTHROPIC_KEY = "demo-anthropic-provider-key-0123456789abcdef"


def write_config(tools_url: str, models_url: str, claude_url: str = "") -> tuple[Path, str]:
    config = yaml.safe_load((ROOT / "examples/demo/config.yaml").read_text())
    socket = RUN_DIR / "agent.sock"
    config["server"]["listen"] = [f"unix://{socket}"]
    config["identity"]["socket"] = f"unix://{WORKLOAD_SOCKET}"
    config["admin"] = {"listen": f"127.0.0.1:{ADMIN_PORT}"}
    config["policy"]["dir"] = str(ROOT / "rego")
    config["audit"]["path"] = str(OUT / "audit.log")
    config["state"]["dir"] = str(OUT / "state")
    config["approvals"]["listen"] = f"unix://{APPROVALS_SOCKET}"
    for target in config["targets"].values():
        target["base_url"] = tools_url
    (OUT / "provider.key").write_text(PROVIDER_KEY)
    (OUT / "provider.key").chmod(0o600)
    config["providers"]["openai"]["base_url"] = models_url
    config["providers"]["openai"]["key_file"] = str(OUT / "provider.key")
    if claude_url:  # an Anthropic-format provider (Messages API) and an alias on it
        (OUT / "anthropic.key").write_text(ANTHROPIC_KEY)
        (OUT / "anthropic.key").chmod(0o600)
        config["providers"]["anthropic"] = {
            "type": "anthropic",
            "base_url": f"{claude_url}/v1",
            "key_file": str(OUT / "anthropic.key"),
        }
        config["models"]["claude-small"] = {"provider": "anthropic", "model": "claude-haiku"}
    config["frontdoor"]["listen"] = f"127.0.0.1:{FRONTDOOR_PORT}"
    config["mcp"]["listen"] = f"127.0.0.1:{MCP_PORT}"
    notes = config["mcp_servers"]["notes"]
    notes["command"][0] = sys.executable  # this interpreter has the mcp SDK the server uses
    notes["cwd"] = str(ROOT)
    path = OUT / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, f"unix:{socket}"


def wait_serving(address: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    # returns as soon as it serves; 90 s: starts on a loaded 2-core machine (the test suite's
    # parallel workers) took over 30 s
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


def start_workload_api(socket: Path, log, bundle_out: Path | None = None) -> subprocess.Popen:
    """``agent-sidecar dev workload-api`` serving the demo agent's SVID on ``socket``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "dev",
            "workload-api",
            "--trust-domain",
            "demo.example",
            "--socket",
            str(socket),
            "--spiffe-id",
            SPIFFE_ID,
            *(["--bundle-out", str(bundle_out)] if bundle_out else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the development Workload API did not start")
        time.sleep(0.05)
    return proc


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, for display only (the token itself is never printed)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def approve_as_oncall(approval_id: str) -> str:
    """What an on-call human does with `agent-sidecar approvals approve ID --reason ...`."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "approvals",
            "--admin",
            f"unix://{APPROVALS_SOCKET}",
            "--as",
            "demo-oncall",
            "approve",
            approval_id,
            "--reason",
            "refund confirmed with the customer",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    RUN_DIR.mkdir(parents=True)
    workload_log = (OUT / "workload-api.log").open("w")
    workload_api = start_workload_api(WORKLOAD_SOCKET, workload_log, OUT / "bundle.pem")
    with ToolServer() as tools, ModelServer() as models, AnthropicServer() as claude:
        config, address = write_config(tools.url, models.url, claude.url)
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
            lines = run_agent(address, approve=approve_as_oncall)
            lines += run_model_agent(f"http://127.0.0.1:{FRONTDOOR_PORT}/v1")
            lines += run_responses_agent(f"http://127.0.0.1:{FRONTDOOR_PORT}/v1")
            lines += run_anthropic_agent(f"http://127.0.0.1:{FRONTDOOR_PORT}")
            lines += run_mcp_agent(address, f"http://127.0.0.1:{MCP_PORT}/mcp")
            for line in lines:
                print(line)
            metrics = requests.get(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5).text
            decisions = [
                m for m in metrics.splitlines() if m.startswith("agent_sidecar_decisions_total")
            ]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            log.close()
            workload_api.send_signal(signal.SIGTERM)
            workload_api.wait(timeout=15)
            workload_log.close()
            shutil.rmtree(RUN_DIR, ignore_errors=True)
        notified = [r.json() for r in tools.received if r.path == "/notify"]
        bearer = [
            r.headers["authorization"].removeprefix("Bearer ")
            for r in tools.received
            if r.path.startswith("/tickets") and "authorization" in r.headers
        ]
        prompts = [
            r.body["messages"][-1]["content"] for r in models.received if "messages" in r.body
        ]
        instructions = [r.body["instructions"] for r in models.received if "input" in r.body]
        keys_seen = {r.headers.get("authorization") for r in models.received}
        claude_sent = [(r.headers, r.body) for r in claude.received]
    # With server.workers > 1 each worker writes its own segment (audit.log, audit.worker1.log)
    log_files = segments(OUT / "audit.log")
    audit = [json.loads(line) for path in log_files for line in path.read_text().splitlines()]
    print(f"\ntool upstream received {len(tools.received)} requests for {len(lines)} calls")
    if notified:
        print(f"partner.notify as the partner received it: {json.dumps(notified[0])}")
    if prompts:
        print(f"the model provider received: {json.dumps(prompts[0])} (key: the sidecar's)")
    if instructions:
        print(f"the Responses API call's instructions as sent: {json.dumps(instructions[0])}")
    if claude_sent:
        headers, body = claude_sent[0]
        print(
            f"the Anthropic provider received: {json.dumps(body['messages'][-1]['content'])} "
            f"(x-api-key: the sidecar's, anthropic-version: {headers.get('anthropic-version')})"
        )
    if bearer:
        claims = jwt_claims(bearer[0])
        print(
            f"tickets received a JWT-SVID the agent never saw: sub={claims['sub']} "
            f"aud={claims['aud']} ttl={claims['exp'] - claims['iat']}s"
        )
    calls = [r for r in audit if r["type"] == "call"]
    approvals = [r for r in audit if r["type"] == "approval"]
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "audit",
            "verify",
            str(OUT / "audit.log"),
            "--bundle",
            str(OUT / "bundle.pem"),
            "--require-sealed",
        ],
        capture_output=True,
        text=True,
    )
    names = ", ".join(path.name for path in log_files)
    print(
        f"audit log: {OUT / 'audit.log'} ({len(calls)} call records, {len(approvals)} approval "
        f"record, hash-chained, checkpoints signed with the SVID; segments: {names})"
    )
    for line in verified.stdout.strip().splitlines():
        if not line.startswith(("BAD", "note")):
            print(f"audit verify --bundle demo-out/bundle.pem: {line}")
    print(f"metrics (http://127.0.0.1:{ADMIN_PORT}/metrics):")
    for metric in decisions:
        print(f"  {metric}")
    from examples.demo.a2a_demo import run_a2a  # it imports this module's helpers

    a2a_lines, a2a_ok = run_a2a(OUT / "a2a")  # two more agents, each behind its own sidecar
    for line in a2a_lines:
        print(line)
    print(f"sidecar log: {OUT / 'sidecar.log'}")
    if not a2a_ok:
        print("demo FAILED: the agent-to-agent exchange is not what it should be", file=sys.stderr)
        return 1
    wrong = [line for line in lines if line.effect != line.expected]
    tickets_calls = sum(1 for r in tools.received if r.path.startswith("/tickets"))
    refunds = [r for r in tools.received if r.path == "/refunds"]
    if keys_seen != {f"Bearer {PROVIDER_KEY}"} or len(prompts) != 1 or len(instructions) != 1:
        print(
            "demo FAILED: the model provider did not get one chat and one Responses call",
            file=sys.stderr,
        )
        return 1
    if [h.get("x-api-key") for h, _ in claude_sent] != [ANTHROPIC_KEY] or any(
        "authorization" in h for h, _ in claude_sent
    ):
        print(
            "demo FAILED: the Anthropic provider did not get one call with the sidecar's key",
            file=sys.stderr,
        )
        return 1
    if len(refunds) != 2:  # the small refund, and the approved large one exactly once
        print(f"demo FAILED: {len(refunds)} refunds reached the upstream", file=sys.stderr)
        return 1
    if wrong or len(calls) != len(lines) or len(bearer) != tickets_calls or verified.returncode:
        print("demo FAILED: a decision or the audit log is not what it should be", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
