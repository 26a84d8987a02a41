"""Issue 26 item 4: the soak's MCP upstream (tests/support/mcp_upstream.py) must not grow, and
the sidecar must not make an upstream hold sessions. The upstream kept every ServerSession a
tool call was made on; over the stateless revision (2026-07-28, what the sidecar and the SDK's
own client speak) that is a new one per request, so it grew by ~40 objects a call and its full
collections stalled the soak for up to a second. Counted here: live ServerSession objects
(after a collection) and the handshake sessions the upstream handed out and saw ended."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client, StdioServerParameters
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError

from sidecar.mcp.http_upstream import _ENVELOPE, _routing
from tests.support.mcp_gateway import endpoint_url, gateway_overrides, with_client
from tests.support.mcp_upstream import HttpMcpServer

ROOT = Path(__file__).resolve().parents[2]

CALLS = 240  # each retained a ServerSession before the fix
BOUND = 8  # in flight or not yet collected: generous, and far below CALLS


@pytest.fixture
def notes():
    with HttpMcpServer() as server:
        yield server


def live_server_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, ServerSession) for o in gc.get_objects())


async def many_calls(client: Client, name: str, count: int, tasks: int = 6) -> list[str]:
    """``count`` calls of ``name`` from ``tasks`` concurrent callers; their texts."""
    texts: list[str] = []

    async def caller(start: int) -> None:
        for i in range(start, count, tasks):
            result = await client.call_tool(name, {"query": f"q{i}"})
            texts.append(result.content[0].text)

    await asyncio.gather(*(caller(k) for k in range(tasks)))
    return texts


def test_item4_stateless_calls_leave_no_session_behind_in_the_test_upstream(notes):
    before = live_server_sessions()

    async def run(client: Client) -> list[Any]:
        found = await many_calls(client, "search", CALLS)
        for i in range(CALLS // 4):  # the other tool that remembers its caller
            await client.call_tool("add", {"text": f"n{i}"})
        refused = []
        for args in ({"query": {"not": "a string"}}, {"query": "x" * 200_000}, {}):
            try:  # hostile: wrong-typed, oversized, missing: answered, still nothing kept
                result = await client.call_tool("search", args)
                refused.append(result.is_error or len(result.content[0].text))
            except MCPError as exc:
                refused.append(exc.error.code)
        return [len(found), *refused]

    outcome = with_client(notes.url, run, mode="2026-07-28")
    assert outcome[0] == CALLS and all(outcome[1:])
    assert notes.sessions_opened == set()  # stateless: the upstream handed out no session
    assert live_server_sessions() - before <= BOUND


def test_item4_a_handshake_session_is_still_told_of_a_change(notes):
    """Held weakly, a live handshake session is not dropped: ``mutate`` still reaches it."""
    changed = asyncio.Event()

    async def handler(message: Any) -> None:
        if getattr(getattr(message, "root", message), "method", "") == (
            "notifications/tools/list_changed"
        ):
            changed.set()

    async def run(client: Client) -> bool:
        await client.call_tool("search", {"query": "remember me"})
        gc.collect()  # a weakly held session that nothing else kept would go now
        async with Client(notes.url, mode="legacy") as other:
            await other.call_tool("mutate", {})
        await asyncio.wait_for(changed.wait(), 30)
        return changed.is_set()

    assert with_client(notes.url, run, message_handler=handler)
    assert len(notes.sessions_opened) == 2
    assert notes.open_sessions == 0  # the SDK's client ends its session (DELETE)


def test_item4_a_stdio_session_is_told_of_a_change_once():
    """Over stdio (one connection), ``mutate`` tells it once, not once per call it served."""
    heard: list[str] = []
    changed = asyncio.Event()

    async def handler(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", "")
        heard.append(method)
        if method == "notifications/tools/list_changed":
            changed.set()

    async def run() -> None:
        command = ["-m", "tests.support.mcp_upstream", "tracker"]
        params = StdioServerParameters(
            command=sys.executable, args=command, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)}
        )
        async with Client(params, mode="legacy", message_handler=handler) as client:
            for i in range(5):
                await client.call_tool("search", {"query": f"q{i}"})
            await client.call_tool("mutate", {})
            await asyncio.wait_for(changed.wait(), 30)
            await client.call_tool("pid", {})  # anything sent after it has arrived by now

    asyncio.run(run())
    assert heard.count("notifications/tools/list_changed") == 1


def test_item4_the_sidecar_holds_one_handshake_session_upstream_and_ends_it(
    notes, start_sidecar, tools, tmp_path
):
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["mcp_servers"]["notes"]["revision"] = "handshake"
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)
    for _ in range(3):  # three agents' sessions to the sidecar, one session upstream
        texts = with_client(url, lambda c: many_calls(c, "notes.search", CALLS // 3))
        assert len(texts) == CALLS // 3 and all(t.startswith("found: ") for t in texts)
    assert running.sidecar.mcp.upstreams["notes"].modern is False
    assert len(notes.sessions_opened) == 1 and notes.open_sessions == 1
    assert live_server_sessions() <= BOUND
    running.stop()  # closing the upstream ends its session
    assert notes.open_sessions == 0


def test_item4_the_sidecar_opens_no_session_to_a_stateless_upstream(
    notes, start_sidecar, tools, tmp_path
):
    running = start_sidecar(tools.url, **gateway_overrides(tmp_path, notes, stdio=False))
    before = live_server_sessions()
    texts = with_client(endpoint_url(running), lambda c: many_calls(c, "notes.search", CALLS))
    assert len(texts) == CALLS and all(t.startswith("found: ") for t in texts)
    assert running.sidecar.mcp.upstreams["notes"].modern is True
    assert notes.sessions_opened == set()
    assert live_server_sessions() - before <= BOUND


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict[str, Any], **headers: str) -> requests.Response:
    sent = {"Accept": "application/json, text/event-stream"} | headers
    return requests.post(url, json=body, headers=sent, timeout=15)


def test_item4_the_soaks_upstream_serves_the_sdks_production_configuration():
    """``--http PORT --stateless-http --json-response`` (what bench/soak.py starts): one JSON
    body a request, and no session even for a handshake-era client."""
    port = free_port()
    command = [sys.executable, "-m", "tests.support.mcp_upstream", "notes", "--http", str(port)]
    server = subprocess.Popen(
        [*command, "--stateless-http", "--json-response"], cwd=ROOT, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        for _ in range(600):  # bounded poll until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                threading.Event().wait(0.05)
        params = {"name": "search", "arguments": {"query": "q"}} | {"_meta": _ENVELOPE}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        answer = post(url, body, **_routing("tools/call", params))
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.json()["result"]["content"][0]["text"] == "found: q"
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}}
        handshake = post(url, {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": init})
        assert handshake.ok and "Mcp-Session-Id" not in handshake.headers
        # Hostile: a malformed body is refused, and the server still answers after it.
        refused = post(url, {"jsonrpc": "2.0", "id": [1]}, **_routing("tools/call", {}))
        assert refused.status_code == 400 and refused.json()["error"]["code"] < 0
        assert post(url, body, **_routing("tools/call", params)).ok
    finally:
        server.terminate()
        server.wait(30)
    misused = subprocess.run([*command[:4], "--json-response"], cwd=ROOT, capture_output=True)
    assert misused.returncode == 2 and b"need --http" in misused.stderr
