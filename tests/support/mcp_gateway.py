"""A sidecar with its MCP endpoint in front of two real upstream MCP servers built with the
official SDK: ``notes`` over Streamable HTTP and ``tracker`` over stdio. Agents are the
official SDK's ``Client``; the policy is the baseline with grants for the test tools."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client

from tests.support.mcp_upstream import HttpMcpServer

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "spiffe://demo.example/agent/support"
INTERN = "spiffe://demo.example/agent/intern"
TASK = "agent-sidecar.io/task_id"
APPROVAL = "agent-sidecar.io/approval_id"


def baseline_policy(tmp_path: Path, **data: Any) -> Path:
    """The shipped rego/ with data.agentsidecar updated by ``data`` (a copy per test)."""
    target = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", target, dirs_exist_ok=True)
    path = target / "agentsidecar" / "data.json"
    doc = json.loads(path.read_text())
    doc.update(data)
    path.write_text(json.dumps(doc))
    return target


TEST_GRANTS = {
    "grants": {
        SUPPORT: {
            "read": ["notes.search", "notes.greet", "notes.notes://welcome"],
            "act": [
                "notes.add",
                "notes.purge",
                "notes.slow",
                "notes.fail",
                "notes.secret",
                "tracker.*",
            ],
        },
        INTERN: {"read": ["notes.search"]},
    },
    "step_up_destructive": True,
}


def gateway_overrides(
    tmp_path: Path, notes: HttpMcpServer, *, stdio: bool = True, **mcp: Any
) -> dict[str, Any]:
    """Settings overrides for ``start_sidecar``: the endpoint on a free loopback port,
    ``notes`` at ``notes``'s URL and ``tracker`` as a stdio command."""
    servers: dict[str, Any] = {
        "notes": {
            "target": "notes-mcp",
            "timeout_s": 5,
            "tools": {"search": {"operation": "read"}},
        }
    }
    if stdio:
        servers["tracker"] = {
            # -m: run as a script, tests/support would shadow the standard library.
            "command": [sys.executable, "-m", "tests.support.mcp_upstream", "tracker"],
            "env": {"PYTHONPATH": str(ROOT)},
            "timeout_s": 5,
            "restart": {"max": 3, "backoff_s": 0.05, "max_backoff_s": 0.2},
        }
    return {
        "targets": {"notes-mcp": {"base_url": notes.base_url}},
        "mcp": {"listen": "127.0.0.1:0", **mcp},
        "mcp_servers": servers,
        "policy": {"dir": str(baseline_policy(tmp_path, mcp=TEST_GRANTS))},
    }


def leak_auth_sidecar(
    start_sidecar: Any, tools_url: str, workload_api: Any, tmp_path: Path, notes: Any
) -> Any:
    """A pod-mode sidecar whose HTTP MCP upstream ``notes`` gets a JWT-SVID (audience
    ``notes``) and exposes ``leak_auth``, which echoes it back in a chosen encoding."""
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["targets"]["notes-mcp"]["auth"] = {"type": "jwt-svid", "audience": "notes"}
    overrides["mcp_servers"]["notes"]["tools"] = {"leak_auth": {"operation": "read"}}
    overrides["identity"] = {
        "mode": "pod",
        "socket": f"unix://{workload_api.socket_path}",
        "pod_tcp": True,
    }
    grants = {"grants": {SUPPORT: {"read": ["notes.*"]}}}
    overrides["policy"] = {"dir": str(baseline_policy(tmp_path, mcp=grants))}
    running = start_sidecar(tools_url, **overrides)
    assert running.sidecar.identity.wait_ready(10)
    return running


def endpoint_url(running: Any) -> str:
    return f"http://127.0.0.1:{running.sidecar.mcp.endpoint.port}/mcp"


def with_client(
    url: str, run: Callable[[Client], Awaitable[Any]], *, mode: str = "legacy", **kw: Any
) -> Any:
    """Run ``run(client)`` with the official client connected to ``url`` (in its own loop)."""
    import asyncio

    async def main() -> Any:
        async with Client(url, mode=mode, **kw) as client:
            return await run(client)

    return asyncio.run(main())
