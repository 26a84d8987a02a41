"""Two agents, each behind its own ``agent-sidecar serve`` with its own SVID: the A2A setup of
``make demo``, the end-to-end tests (tests/e2e/test_a2a_agents.py) and ``make bench``.

* ``support`` (agent A): its sidecar serves the A2A endpoint ``a2a.listen`` on loopback and
  knows one peer, ``billing``, reached at B's inbound listener over TLS, with a JWT-SVID for
  B.s SPIFFE ID as the credential.
* ``billing`` (agent B): its sidecar's inbound listener (``a2a_inbound``) verifies every caller
  and passes allowed calls to B's own A2A server on loopback (``agent_url``); B's tool calls
  go through B's sidecar (target ``kb`` gets a JWT-SVID minted per call).

Both SVIDs come from one development SPIFFE authority (trust domain demo.example), each from
its own development Workload API, as SPIRE would serve two pods. Policy is the shipped
baseline (rego/) unless ``policy_dir`` says otherwise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from examples.demo.run import free_port, wait_serving
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer

__all__ = ["BILLING", "SUPPORT", "Pair", "Side", "records", "start_pair"]

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "demo" / "config.yaml"
SUPPORT = "spiffe://demo.example/agent/support"
BILLING = "spiffe://demo.example/agent/billing"
KB_AUDIENCE = "spiffe://demo.example/kb"
SKILLS = {"refund": "act", "lookup": "read", "close_account": "act", "audit": "read"}


@dataclass
class Side:
    """One agent's sidecar: a ``serve`` process, its home directory and its settings."""

    name: str
    spiffe_id: str
    home: Path
    config: dict[str, Any]
    api: DevWorkloadApiServer
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.home}/agent.sock"

    @property
    def approvals_address(self) -> str:
        return f"unix://{self.home}/approvals.sock"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.log"

    def start(self) -> None:
        (self.home / "c.yaml").write_text(yaml.safe_dump(self.config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(self.home / "c.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "serve.log").open("wb"),
            cwd=ROOT,
        )
        wait_serving(self.address, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Pair:
    support: Side
    billing: Side
    a2a_port: int
    inbound_port: int
    apis: list[DevWorkloadApiServer] = field(default_factory=list)

    @property
    def peer_url(self) -> str:
        """Where agent A's A2A client resolves billing's card: A's own sidecar."""
        return f"http://127.0.0.1:{self.a2a_port}/peers/billing"

    @property
    def inbound_url(self) -> str:
        """B's inbound listener, where peers reach B (TLS)."""
        return f"https://127.0.0.1:{self.inbound_port}"

    def stop(self) -> None:
        for side in (self.support, self.billing):
            side.stop()
        for api in self.apis:
            api.stop()


def records(path: Path, type: str = "call") -> list[dict[str, Any]]:
    """The audit log's records of ``type`` (call records by default)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("type") == type]


def _base(home: Path, api: DevWorkloadApiServer, tools_url: str, policy_dir: Path) -> dict:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["server"] = {"listen": [f"unix://{home}/agent.sock"]}
    raw["identity"] = {"mode": "pod", "socket": api.address, "pod_tcp": True}
    raw["policy"]["dir"] = str(policy_dir)
    raw["audit"] = {"path": str(home / "audit.log")}  # checkpoints signed with the SVID
    raw["admin"] = {"listen": ""}
    raw["state"] = {"dir": str(home / "state")}
    raw["approvals"] = {
        "listen": f"unix://{home}/approvals.sock",
        "groups": {"payments-oncall": ["local:alice"]},
    }
    raw["frontdoor"], raw["mcp"], raw["mcp_servers"] = {}, {}, {}
    raw.pop("providers", None)
    raw.pop("models", None)
    for target in raw["targets"].values():
        target["base_url"] = tools_url
        target.pop("auth", None)
    return raw


def start_pair(
    home: Path,
    *,
    agent_url: str,
    card: dict[str, Any],
    tools_url: str,
    authority: DevAuthority | None = None,
    policy_dir: Path = ROOT / "rego",
    peer: dict[str, Any] | None = None,
    inbound: dict[str, Any] | None = None,
) -> Pair:
    """Start billing's sidecar in front of ``agent_url`` (serving ``card``), then support's
    with billing as its peer. ``peer`` / ``inbound`` override ``a2a_peers.billing`` /
    ``a2a_inbound`` keys. Stops what it started if anything fails."""
    authority = authority or DevAuthority("demo.example")
    homes = {name: home / name for name in ("support", "billing")}
    for path in homes.values():
        path.mkdir(parents=True, exist_ok=True)
    # billing's SVID also names "localhost": the relay checks the host name the peer's URL
    # uses, the card fetch the SPIFFE ID (docs/a2a.md).
    apis = [
        DevWorkloadApiServer(
            DevWorkloadApi(authority, sid, dns_names=dns), homes[name] / "wl.sock"
        ).start()
        for name, sid, dns in (("support", SUPPORT, ()), ("billing", BILLING, ("localhost",)))
    ]
    a2a_port, inbound_port = free_port(), free_port()
    (homes["billing"] / "card.json").write_text(json.dumps(card))
    b = _base(homes["billing"], apis[1], tools_url, policy_dir)
    b["targets"]["kb"]["auth"] = {"type": "jwt-svid", "audience": KB_AUDIENCE}
    b["a2a_inbound"] = {
        "listen": f"127.0.0.1:{inbound_port}",
        "agent_url": agent_url,
        "card": str(homes["billing"] / "card.json"),
        "timeout_s": 10,
        "max_message_bytes": 65536,
        "txn_issuers": [SUPPORT],  # support's sidecar mints the Txn-Token it relays
    } | (inbound or {})
    a = _base(homes["support"], apis[0], tools_url, policy_dir)
    a["a2a"] = {"listen": f"127.0.0.1:{a2a_port}"}
    a["a2a_peers"] = {
        "billing": {
            "url": f"https://localhost:{inbound_port}",
            "spiffe_id": BILLING,
            "credential": {"kind": "mtls"},
            "timeout_s": 5,
            "max_message_bytes": 65536,
            "skills": {skill: {"operation": op} for skill, op in SKILLS.items()},
        }
        | (peer or {})
    }
    pair = Pair(
        Side("support", SUPPORT, homes["support"], a, apis[0]),
        Side("billing", BILLING, homes["billing"], b, apis[1]),
        a2a_port,
        inbound_port,
        apis,
    )
    try:
        pair.billing.start()
        pair.support.start()
    except BaseException:
        pair.stop()
        raise
    return pair
