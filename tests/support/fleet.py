"""Several ``agent-sidecar serve`` processes sharing one PostgreSQL state store: a fleet of
replicas as Kubernetes would run them, each with its own agent socket, approvals socket,
front door and audit log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from examples.demo.run import free_port, wait_serving
from sidecar.client import SidecarClient
from tests.support.running import AUDIT_PATHS, DEMO_CONFIG, ROOT
from tests.support.settle import poll

__all__ = ["ONCALL", "Replica", "chat_at_once", "fleet_config", "poll", "start_replicas"]

ONCALL = "oncall@example.com"  # a console user in group payments-oncall (proxy headers)


def fleet_config(
    home: Path, tools_url: str, pg_state: dict[str, Any], models_url: str = ""
) -> dict[str, Any]:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["server"] = {"listen": [f"unix://{home}/agent.sock"]}
    raw["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    raw["policy"]["dir"] = str(ROOT / "rego")
    raw["audit"] = {"path": str(home / "audit.log"), "signing_key": str(home / "audit.key")}
    raw["admin"] = {"listen": f"127.0.0.1:{free_port()}"}  # /metrics
    raw["state"] = {"dir": str(home / "state"), **pg_state}
    raw["mcp"], raw["mcp_servers"] = {}, {}
    raw["approvals"] = {
        "listen": f"unix://{home}/approvals.sock",
        "groups": {"payments-oncall": ["local:alice"]},
    }
    raw["budgets"] = {"task_tokens": 1000}
    for target in raw["targets"].values():
        target["base_url"] = tools_url
        target.pop("auth", None)
    raw["frontdoor"] = {}
    raw.pop("providers", None)
    raw.pop("models", None)
    if models_url:
        (home / "openai.key").write_text("sk-fleet-test-key-0123456789\n")
        raw["providers"] = {
            "openai": {"base_url": models_url, "key_file": str(home / "openai.key")}
        }
        raw["models"] = {"gpt-small": {"provider": "openai", "model": "gpt-4o-mini"}}
        raw["frontdoor"] = {"listen": f"127.0.0.1:{free_port()}"}
    return raw


@dataclass
class Replica:
    name: str
    home: Path
    proc: subprocess.Popen[bytes]
    config: dict[str, Any]

    @property
    def address(self) -> str:
        return f"unix:{self.home}/agent.sock"

    @property
    def frontdoor_url(self) -> str:
        return f"http://{self.config['frontdoor']['listen']}/v1"

    def client(self, **kwargs: Any) -> SidecarClient:
        return SidecarClient(self.address, **{"timeout_s": 30, **kwargs})

    def approvals(self, approver: str = "alice") -> Any:
        from sidecar.approvals.client import ApprovalsClient

        return ApprovalsClient(f"unix://{self.home}/approvals.sock", approver=approver)

    def metrics(self) -> str:
        import urllib.request

        url = f"http://{self.config['admin']['listen']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in (self.home / "serve.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_replicas(
    tmp_path: Path, count: int, make_config: Callable[[Path], dict[str, Any]]
) -> list[Replica]:
    """Start ``count`` replicas at once (their migrations race, as in a rollout)."""
    replicas = []
    for i in range(count):
        home = tmp_path / f"r{i}"
        home.mkdir(parents=True)
        config = make_config(home)
        (home / "c.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(home / "c.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=(home / "serve.log").open("wb"),
            cwd=ROOT,
        )
        replicas.append(Replica(f"r{i}", home, proc, config))
        AUDIT_PATHS.append(home / "audit.log")
    try:
        for replica in replicas:
            wait_serving(replica.address, replica.proc)
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def chat_at_once(fleet: list[Replica], task: str, calls: int) -> list[str]:
    """``calls`` chat completions at once with the unmodified openai SDK, spread over the
    replicas' front doors, under ``task``; each prompt is about 75 tokens with max_tokens 50
    (a 354-token reservation: 300 bytes, 4 of framing, 50). Each outcome: ``ok`` or the
    refusal's code."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    sdks = [
        openai.OpenAI(
            base_url=r.frontdoor_url, api_key="unused", max_retries=0,
            default_headers={"x-agent-sidecar-task-id": task},
        )
        for r in fleet
    ]  # fmt: skip
    prompt = [{"role": "user", "content": "word " * 60}]

    def call(i: int) -> str:
        try:
            sdks[i % len(sdks)].chat.completions.create(
                model="gpt-small", messages=prompt, max_tokens=50
            )
            return "ok"
        except openai.RateLimitError as exc:
            return str(exc.body["code"])

    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(call, range(calls)))
