"""What acting for a person costs: Check without a user token, with one (verified against a
cached JWKS), CallTool through a token-exchange target (the exchanged token cached per task),
and AuthZEN evaluations, side by side in one run on this machine.

The sidecar runs as its own process (identity mode ``pod``, a development Workload API beside
it), the authorization server (tests/support/oauth_server.py: Authlib over TLS) and the tool
upstream in this process's threads, and this process is the agent. Prints p50/p99 and calls
per second per row, sequential and at --concurrency. Timings on shared machines are noisy:
read the differences between rows, not absolute values.

    python bench/user_context.py [--calls 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sidecar  # noqa: E402,F401  (before grpc: the engine's load order)
from bench.relay_overhead import percentile, run_calls, start_sidecar  # noqa: E402
from examples.demo.run import start_workload_api, wait_serving  # noqa: E402
from examples.demo.tools_server import ToolServer  # noqa: E402
from sidecar.client import SidecarClient  # noqa: E402

AGENT = "spiffe://demo.example/agent/support"
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny"}

decision := {"effect": "allow"} if not input.user

decision := {"effect": "allow", "obligations": {"credential": {
	"audience": "https://tickets.example", "ttl_s": 600, "scopes": ["tickets.read"],
}}} if "support" in input.user.groups
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from tests.support.oauth_server import AuthorizationServer
    from tests.support.policies import write_policy
    from tests.support.unix_http import UnixConnection

    work = Path(tempfile.mkdtemp(prefix="bench-user-"))
    write_policy(work / "policy", POLICY)
    log = (work / "workload.log").open("w")
    # The Workload API process has its own CA: the authorization server must trust its JWT
    # key, so it reads the bundle the process writes.
    workload = start_workload_api(work / "workload.sock", log, work / "bundle.pem")
    bundle_authority = _BundleFromWorkloadApi(work / "workload.sock")
    idp = AuthorizationServer(
        work,
        spiffe=bundle_authority,
        clients={AGENT: ({"tickets.read"}, {"https://tickets.example"})},
    ).start()
    with ToolServer() as tools:
        config = {
            "server": {"listen": [f"unix://{work}/agent.sock"]},
            "identity": {"mode": "pod", "socket": f"unix://{work}/workload.sock"},
            "policy": {"dir": str(work / "policy")},
            "audit": {"path": str(work / "audit.log")},
            "state": {"dir": str(work / "state")},
            "users": {
                "issuers": {
                    "corp": {
                        "issuer": idp.issuer,
                        "audiences": ["agent-app"],
                        "ca_file": str(idp.ca_file),
                    }
                }
            },
            "authzen": {"listen": f"unix://{work}/authzen.sock"},
            "targets": {
                "tickets": {
                    "base_url": tools.url,
                    "timeout_s": 5,
                    "auth": {
                        "type": "token-exchange",
                        "token_endpoint": idp.token_endpoint,
                        "audience": "https://tickets.example",
                        "ca_file": str(idp.ca_file),
                    },
                },
            },
            "tools": {
                "tickets.get": {
                    "target": "tickets",
                    "operation": "read",
                    "method": "GET",
                    "path": "/tickets/{id}",
                }
            },
        }
        proc = start_sidecar(work, config)
        try:
            wait_serving(f"unix:{work}/agent.sock", proc)
            token = idp.user_token("alice", groups=["support"], ttl_s=3600)
            rows = []
            with SidecarClient(f"unix:{work}/agent.sock", timeout_s=30) as client:
                task = client.start_task("bench").task_id

                def check_plain() -> None:
                    assert client.check("tickets.get", {"id": "7"}).effect == "allow"

                def check_user() -> None:
                    decision = client.check("tickets.get", {"id": "7"}, user_token=token)
                    assert decision.effect == "allow"

                def call_exchanged() -> None:
                    client.call_tool("tickets.get", {"id": "7"}, task_id=task, user_token=token)

                body = json.dumps(
                    {
                        "subject": {"type": "agent", "id": AGENT},
                        "action": {"name": "call"},
                        "resource": {"type": "tool", "id": "tickets.get"},
                    }
                ).encode()

                def authzen() -> None:
                    connection = UnixConnection(str(work / "authzen.sock"))
                    connection.request(
                        "POST", "/access/v1/evaluation", body, {"Content-Type": "application/json"}
                    )
                    answer = connection.getresponse()
                    assert answer.status == 200 and json.loads(answer.read())["decision"]
                    connection.close()

                for name, call in (
                    ("Check, no user", check_plain),
                    ("Check, user token", check_user),
                    ("CallTool, token exchange", call_exchanged),
                    ("AuthZEN evaluation", authzen),
                ):
                    for _ in range(50):
                        call()  # warm: JWKS, the exchanged token, connections
                    for concurrency in (1, args.concurrency):
                        latencies, elapsed = run_calls(call, args.calls, concurrency)
                        rows.append(
                            (
                                name,
                                concurrency,
                                percentile(latencies, 50),
                                percentile(latencies, 99),
                                args.calls / elapsed,
                            )
                        )
            print(f"{'path':<26} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8}")
            for name, concurrency, p50, p99, rate in rows:
                print(f"{name:<26} {concurrency:>4} {p50:>8.2f} {p99:>8.2f} {rate:>8.0f}")
            print(
                f"authorization server: {len(idp.exchanges)} exchanges for "
                f"{2 * args.calls + 50} token-exchange calls (cached per task)"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            idp.stop()
            workload.terminate()
            workload.wait(timeout=30)
    return 0


class _BundleFromWorkloadApi:
    """What the authorization server needs of a SPIFFE authority: the JWT bundle, read from
    the development Workload API (the JWT keys live in that process)."""

    def __init__(self, socket_path: Path) -> None:
        from spiffe import WorkloadApiClient

        self._client = WorkloadApiClient(socket_path=f"unix://{socket_path}")

    @property
    def jwt_bundle_json(self) -> bytes:
        bundles = self._client.fetch_jwt_bundles()
        keys = []
        from jwt.algorithms import ECAlgorithm

        for bundle in bundles.bundles:
            for kid, key in bundle.jwt_authorities.items():
                keys.append(json.loads(ECAlgorithm.to_jwk(key)) | {"kid": kid})
        return json.dumps({"keys": keys}).encode()


if __name__ == "__main__":
    sys.exit(main())
