"""Issue 34 item 1: CallPeer served by every worker of ``agent-sidecar serve``.

``server.workers: 2`` on one TCP listener: the loopback A2A endpoint and the inbound listener
live in worker 0 only, yet a CallPeer landing on worker 1 must be the same guarded call —
its own relay to the peer built from the same settings, and the same transaction token
(Txn-Token) for a call under a task. The sidecar runs with its SVID from a development
Workload API (identity mode jwt); the peer is the real a2a-sdk server."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.demo.run import free_port, wait_serving
from sidecar.client import SidecarClient
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.workers import WorkersStatus, segments
from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_ID
from tests.integration.test_a2a_grpc import AGENT, PEER, POLICY, _message
from tests.support.a2a_peer import PeerAgent
from tests.support.fleet import poll
from tests.support.policies import write_policy
from tests.support.running import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def peer():
    agent = PeerAgent()
    yield agent
    agent.stop()


@pytest.fixture
def served(tmp_path, tools, authority, peer):
    """``serve`` with two workers, A2A peers, the inbound side on (it mints Txn-Tokens)."""
    api = DevWorkloadApiServer(DevWorkloadApi(authority, SIDECAR_ID), tmp_path / "wl.sock")
    api.start()
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    port = free_port()
    raw["server"] = {"listen": [f"127.0.0.1:{port}"], "workers": 2}
    raw["identity"] = {
        "mode": "jwt",
        "socket": f"unix://{api.socket_path}",
        "audience": SIDECAR_AUDIENCE,
    }
    raw["policy"] = {"dir": str(write_policy(tmp_path / "policy", POLICY))}
    raw["audit"] = {"path": str(tmp_path / "audit.log")}
    raw["audit"]["signing_key"] = str(tmp_path / "audit-signing.key")
    raw["admin"] = {"listen": ""}
    raw["state"] = {"dir": str(tmp_path / "state")}
    raw["frontdoor"] = {}
    raw["mcp"], raw["mcp_servers"] = {}, {}
    raw["approvals"] = {"listen": f"unix://{tmp_path}/approvals.sock"}
    for target in raw["targets"].values():
        target["base_url"] = tools.url
        target.pop("auth", None)
    raw["a2a"] = {"listen": "127.0.0.1:0"}
    raw["a2a_inbound"] = {
        "listen": "127.0.0.1:0",
        "agent_url": "http://127.0.0.1:9",  # never reached here
        "agent_id": AGENT,
    }
    raw["a2a_peers"] = {"billing": PEER["billing"] | {"url": peer.url, "timeout_s": 10}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(tmp_path / "c.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, proc)
        poll(
            lambda: (WorkersStatus.read(tmp_path / "state") or WorkersStatus(expected=2)).complete,
            timeout_s=90,
            what="both workers serving",
        )
        yield proc, address, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        api.stop()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_item1_grpc_call_peer_on_every_worker_is_guarded_and_carries_the_txn_token(
    served, peer, tmp_path
):
    proc, address, token = served
    with SidecarClient(address, jwt_svid=lambda: token, timeout_s=30) as client:
        task_id = client.start_task("settle the invoice").task_id

    def calls(index: int) -> int:
        # A connection of its own: the kernel spreads them over both workers.
        with SidecarClient(address, jwt_svid=lambda: token, timeout_s=30) as client:
            for n in range(3):
                params = _message(f"echo {index}-{n}", "lookup", msg_id=f"m{index}-{n}")
                answer = client.call_peer("billing", "SendMessage", params, task_id=task_id)
                assert (
                    answer.result["message"]["parts"][0]["text"] == f"peer heard: echo {index}-{n}"
                )
        return 3

    with ThreadPoolExecutor(12) as pool:
        assert sum(pool.map(calls, range(12))) == 36
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert len(peer.seen) == 36
    txns = {_claims(seen.headers["txn-token"])["txn"] for seen in peer.seen}
    assert len(txns) == 1  # one transaction: the task's, whichever worker relayed
    found = segments(tmp_path / "audit.log")
    per_worker = []
    for path in found:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        records = [r for r in lines if r.get("type") == "call" and r["rpc"] == "A2A SendMessage"]
        assert all(r["outcome"]["code"] == "ok" for r in records)
        assert all(r["task"]["id"] == task_id for r in records)
        per_worker.append(len(records))
    assert sum(per_worker) == 36
    assert len(per_worker) == 2 and all(per_worker), per_worker  # both workers served
