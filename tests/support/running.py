"""A real sidecar for tests: built from settings, serving on a unix socket, in its own loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import yaml

from sidecar.app import Sidecar
from sidecar.client import SidecarClient
from sidecar.config import Settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
_STOPPED: list[RunningSidecar] = []
# Every audit log a test sidecar wrote this session, for the secret scan in conftest.
AUDIT_PATHS: list[Path] = []
DEMO_CONFIG = ROOT / "examples" / "demo" / "config.yaml"
# A human approver's SPIFFE ID (mTLS approvals listener tests).
APPROVER = "spiffe://demo.example/human/alice"


def sidecar_settings(tmp_path: Path, tools_url: str, **overrides: Any) -> Settings:
    """The demo config pointed at ``tools_url``, with ``section={...}`` overrides merged in."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["server"]["listen"] = [f"unix://{tmp_path}/agent.sock"]
    raw["policy"]["dir"] = str(ROOT / "rego")
    raw["audit"]["path"] = str(tmp_path / "audit.log")
    # Always in the test's directory, even when a test points the log at /dev/full.
    raw["audit"]["signing_key"] = str(tmp_path / "audit-signing.key")
    raw["admin"] = {"listen": "127.0.0.1:0"}  # a free port per test sidecar
    raw["state"] = {"dir": str(tmp_path / "state")}
    raw["frontdoor"] = {}  # off unless a test asks (the demo's fixed port would collide)
    raw["mcp"], raw["mcp_servers"] = {}, {}  # likewise the MCP endpoint and its servers
    raw["approvals"] = {
        "listen": f"unix://{tmp_path}/approvals.sock",
        "groups": {"payments-oncall": ["local:alice", APPROVER]},
    }
    # Static identity and no upstream credentials unless a test asks for SPIFFE (identity=...).
    raw["identity"] = {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"}
    for target in raw["targets"].values():
        target["base_url"] = tools_url
        target.pop("auth", None)
    for section, values in overrides.items():
        if section == "identity":
            raw[section] = values
        elif isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return parse_settings(raw, source=tmp_path / "config.yaml")


class RunningSidecar:
    """Runs :class:`Sidecar` on an event loop in a background thread."""

    def __init__(self, settings: Settings, role: Any = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> Sidecar:
            sidecar = Sidecar.build(settings, role)
            await sidecar.start()
            return sidecar

        self.sidecar = self.run(build())
        self.address = self.sidecar.server.addresses[0]
        self.audit_path = settings.audit.path
        AUDIT_PATHS.append(self.audit_path)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def client(self, **kwargs: Any) -> SidecarClient:
        return SidecarClient(self.address, **kwargs)

    @property
    def approvals_address(self) -> str:
        assert self.sidecar.approvals_server is not None
        return self.sidecar.approvals_server.address

    def approvals(self, approver: str = "alice", **kwargs: Any) -> Any:
        from sidecar.approvals.client import ApprovalsClient

        return ApprovalsClient(self.approvals_address, approver=approver, **kwargs)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.run(self.sidecar.stop(0))
        self.run(self.loop.shutdown_default_executor())  # no idle threads left behind
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        # Kept referenced for the rest of the session: the garbage collector finalizing a
        # stopped sidecar's grpc.aio objects while other sidecars' loops run has crashed the
        # test process (a segfault during GC). In production one sidecar owns the process.
        _STOPPED.append(self)


@contextlib.contextmanager
def serve_process(tmp_path: Path, config: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """``agent-sidecar serve`` as its own process on ``tmp_path/agent.sock``; yields
    (process, address) once its health is SERVING, and stops it at the end."""
    import subprocess
    import sys

    from examples.demo.run import wait_serving

    config = {
        "server": {"listen": [f"unix://{tmp_path}/agent.sock"]},
        "admin": {"listen": ""},
        **config,
    }
    config.setdefault("audit", {}).setdefault("path", str(tmp_path / "audit.log"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(tmp_path / "c.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"unix:{tmp_path}/agent.sock"
    try:
        wait_serving(address, proc)
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
