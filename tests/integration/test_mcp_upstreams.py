"""Upstream MCP servers as the gateway meets them: credentials that are the sidecar's and
never the agent's (JWT-SVID, bearer from a file), stdio secrets from files, an upstream that
forgets its session, one that is down, and a stdio command that never starts."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import jwt
import pytest
import requests
from mcp.shared.exceptions import MCPError

from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_ID
from tests.support.mcp_gateway import (
    SUPPORT,
    TASK,
    endpoint_url,
    gateway_overrides,
    with_client,
)
from tests.support.mcp_upstream import HttpMcpServer


@pytest.fixture
def notes():
    with HttpMcpServer() as server:
        yield server


def rpc(url: str, method: str, params: dict[str, Any], session: str = "", **headers: str) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if session:
        sent["Mcp-Session-Id"] = session
    return requests.post(url, json=body, headers=sent | headers, timeout=15)


def open_session(url: str, **headers: str) -> str:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}}
    return rpc(url, "initialize", init, **headers).headers["Mcp-Session-Id"]


def test_jwt_mode_attests_the_caller_and_the_upstream_gets_the_sidecars_svid(
    notes, start_jwt_sidecar, authority, tmp_path
):
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["targets"]["notes-mcp"]["auth"] = {"type": "jwt-svid", "audience": "notes"}
    running = start_jwt_sidecar(**overrides)
    url = endpoint_url(running)
    agent_token = authority.issue_jwt(SUPPORT, [SIDECAR_AUDIENCE])
    bearer = {"Authorization": f"Bearer {agent_token}"}
    session = open_session(url)
    refused = rpc(url, "tools/list", {}, session).json()["error"]
    assert refused["code"] == -32012 and refused["data"]["code"] == "missing_credentials"
    forged = rpc(url, "tools/list", {}, session, Authorization="Bearer x.y.z").json()["error"]
    assert forged["code"] == -32012 and forged["data"]["code"] == "jwt_malformed"
    listed = rpc(url, "tools/list", {}, session, **bearer).json()["result"]["tools"]
    assert "notes.search" in [t["name"] for t in listed]
    found = rpc(
        url, "tools/call", {"name": "notes.search", "arguments": {"query": "q"}}, session, **bearer
    ).json()
    assert found["result"]["content"][0]["text"] == "found: q"
    assert notes.authorizations and agent_token not in " ".join(notes.authorizations)
    for header in notes.authorizations:
        claims = jwt.decode(header.removeprefix("Bearer "), options={"verify_signature": False})
        assert claims["sub"] == SIDECAR_ID and claims["aud"] == ["notes"]


def test_a_bearer_token_is_read_from_its_file_and_never_the_agents(
    notes, start_sidecar, tools, tmp_path
):
    token = tmp_path / "notes-token"
    token.write_text("first-token\n")
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["targets"]["notes-mcp"]["auth"] = {"type": "bearer", "token_file": str(token)}
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)
    session = open_session(url)
    agent = {"Authorization": "Bearer agent-own-key"}
    rpc(url, "tools/call", {"name": "notes.search", "arguments": {"query": "a"}}, session, **agent)
    assert set(notes.authorizations) == {"Bearer first-token"}
    token.write_text("rotated-token")  # a rotated Secret: the next call sends the new one
    os.utime(token, ns=(1, 1))
    rpc(url, "tools/call", {"name": "notes.search", "arguments": {"query": "b"}}, session)
    assert notes.authorizations[-1] == "Bearer rotated-token"
    assert "agent-own-key" not in " ".join(notes.authorizations)


def test_an_upstream_quoting_the_sidecars_credential_in_a_list_does_not_leak_it(
    start_sidecar, tools, tmp_path
):
    token = tmp_path / "notes-token"
    token.write_text("list-token-7f3a")
    with HttpMcpServer(search_description="Search. (Auth was: Bearer list-token-7f3a)") as notes:
        overrides = gateway_overrides(tmp_path, notes, stdio=False)
        overrides["targets"]["notes-mcp"]["auth"] = {"type": "bearer", "token_file": str(token)}
        running = start_sidecar(tools.url, **overrides)
        listed = with_client(endpoint_url(running), lambda c: c.list_tools())
        running.stop()
    (search,) = [t for t in listed.tools if t.name == "notes.search"]
    assert "list-token-7f3a" not in search.description
    assert search.description == "Search. (Auth was: Bearer [REDACTED:credential])"


def test_stdio_secrets_come_from_files_and_the_agents_environment_stays_out(
    notes, start_sidecar, tools, tmp_path, monkeypatch
):
    secret = tmp_path / "tracker-token"
    secret.write_text("tracker-token-value\n")
    monkeypatch.setenv("AGENT_ONLY_SECRET", "leaked")  # the sidecar's (agent-side) environment
    overrides = gateway_overrides(tmp_path, notes)
    overrides["mcp_servers"]["tracker"]["env_files"] = {"TRACKER_TOKEN": str(secret)}
    running = start_sidecar(tools.url, **overrides)
    task = running.client().start_task("env")

    async def run(client: Any) -> tuple[str, str, str]:
        meta = {TASK: task.task_id}
        name = {"name": "TRACKER_TOKEN"}
        digest = await client.call_tool("tracker.env_digest", name, meta=meta)
        token = await client.call_tool("tracker.env", name, meta=meta)
        other = await client.call_tool("tracker.env", {"name": "AGENT_ONLY_SECRET"}, meta=meta)
        text = other.content[0].text if other.content else ""
        return digest.content[0].text, token.content[0].text, text

    digest, token, other = with_client(endpoint_url(running), run)
    # The child has the file's content (its digest proves it) ...
    assert digest == hashlib.sha256(b"tracker-token-value").hexdigest() and other == ""
    # ... and echoing it back gives the agent nothing (issue 32 item 3).
    assert token == "[REDACTED:credential]"


def test_a_stdio_command_that_never_starts_is_given_up(notes, start_sidecar, tools, tmp_path):
    overrides = gateway_overrides(tmp_path, notes)
    overrides["mcp_servers"]["tracker"]["command"] = [sys.executable, "-c", "raise SystemExit(2)"]
    running = start_sidecar(tools.url, **overrides)
    upstream = running.sidecar.mcp.upstreams["tracker"]
    task = running.client().start_task("down")
    codes = set()

    async def attempt(client: Any) -> str:
        try:
            await client.call_tool("tracker.pid", {}, meta={TASK: task.task_id})
        except MCPError as exc:
            codes.add(exc.error.data["code"])
            return exc.error.message
        return "served"

    for _ in range(100):  # bounded: until the supervisor gives up (3 restarts)
        if "is down" in with_client(endpoint_url(running), attempt):
            break
    else:
        pytest.fail("the stdio server was never given up")
    assert upstream.starts == 4  # the first start and 3 restarts
    assert codes <= {"upstream_unavailable", "upstream_timeout", "unknown_tool"}
    # The HTTP server is unaffected.
    names = [t.name for t in with_client(endpoint_url(running), lambda c: c.list_tools()).tools]
    assert "notes.search" in names and not any(n.startswith("tracker.") for n in names)


def test_an_upstream_that_forgets_the_session_is_joined_again(
    notes, start_sidecar, tools, tmp_path
):
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["mcp_servers"]["notes"]["revision"] = "handshake"
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)
    call = lambda c: c.call_tool("notes.search", {"query": "q"})  # noqa: E731
    assert with_client(url, call).content[0].text == "found: q"
    upstream = running.sidecar.mcp.upstreams["notes"]
    old = upstream._session_id
    # The upstream ends the gateway's session (as a restarted server would have lost it).
    assert requests.delete(notes.url, headers={"Mcp-Session-Id": old}, timeout=10).ok
    assert with_client(url, call).content[0].text == "found: q"
    assert upstream._session_id not in (None, old)


def test_an_upstream_that_is_down_is_unavailable_and_left_out_of_lists(
    notes, start_sidecar, tools, tmp_path
):
    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["targets"]["notes-mcp"]["base_url"] = "http://127.0.0.1:9"  # nothing listens
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)
    assert with_client(url, lambda c: c.list_tools()).tools == []

    async def run(client: Any) -> Any:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("notes.search", {"query": "q"})
        return caught.value.error

    error = with_client(url, run)
    assert error.code == -32013 and error.data["code"] == "upstream_unavailable"
    record = json.loads(running.audit_path.read_text().splitlines()[-1])
    assert record["rpc"] == "MCP tools/call" and record["outcome"]["relayed"] is False


def test_nothing_a_lying_upstream_lists_or_answers_is_trusted(
    notes, start_sidecar, tools, tmp_path
):
    from tests.support.mcp_gateway import ROOT, baseline_policy

    overrides = gateway_overrides(tmp_path, notes, stdio=False)
    overrides["mcp_servers"]["hostile"] = {
        "command": [sys.executable, "-m", "tests.support.hostile_mcp"],
        "env": {"PYTHONPATH": str(ROOT)},
        "max_tools": 20,
        "tools": {"ok": {"operation": "read"}, "extra0": {"operation": "read"}},
        "restart": {"backoff_s": 0.05},
    }
    overrides["relay"] = {"max_response_bytes": 1024 * 1024}
    grants = {"grants": {SUPPORT: {"read": ["hostile.*"], "act": ["hostile.*"]}}}
    overrides["policy"] = {"dir": str(baseline_policy(tmp_path, mcp=grants))}
    running = start_sidecar(tools.url, **overrides)
    url = endpoint_url(running)

    async def run(client: Any) -> tuple[list[str], str, Any]:
        names = [t.name for t in (await client.list_tools()).tools]
        ok = await client.call_tool("hostile.ok", {})
        with pytest.raises(MCPError) as big:
            await client.call_tool("hostile.extra0", {})
        return names, ok.content[0].text, big.value.error

    names, ok, big = with_client(url, run)
    # Valid, unique, well-named entries only, and no more than max_tools were considered.
    assert names == ["hostile.ok", *(f"hostile.extra{i}" for i in range(13))]
    assert ok == "fine"  # a non-JSON line and an unasked-for answer were skipped
    assert big.code == -32015 and big.data["code"] == "upstream_response_too_large"


def test_an_mtls_upstream_gets_the_sidecars_svid_and_is_verified(
    start_sidecar, tools, workload_api, authority, tmp_path
):
    import ssl

    from sidecar.identity.dev_authority import DevAuthority

    def serve(issuer: DevAuthority, name: str) -> HttpMcpServer:
        svid = issuer.issue_x509("spiffe://demo.example/notes-mcp", dns_names=("localhost",))
        cert, key, roots = (tmp_path / f"{name}.{x}" for x in ("crt", "key", "ca"))
        cert.write_bytes(svid.chain_pem)
        key.write_bytes(svid.key_pem)
        roots.write_bytes(authority.x509_bundle_pem)
        return HttpMcpServer(
            tls={
                "ssl_certfile": str(cert),
                "ssl_keyfile": str(key),
                "ssl_ca_certs": str(roots),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,  # no client SVID, no connection
            }
        )

    with serve(authority, "good") as good, serve(DevAuthority("demo.example"), "bad") as impostor:
        overrides = gateway_overrides(tmp_path, good, stdio=False)
        overrides["targets"] = {
            "notes-mcp": {"base_url": good.base_url, "auth": {"type": "mtls"}},
            "impostor-mcp": {"base_url": impostor.base_url, "auth": {"type": "mtls"}},
        }
        overrides["mcp_servers"]["impostor"] = {"target": "impostor-mcp", "timeout_s": 5}
        overrides["identity"] = {
            "mode": "pod",
            "socket": f"unix://{workload_api.socket_path}",
            "pod_tcp": True,
        }
        running = start_sidecar(tools.url, **overrides)
        assert running.sidecar.identity.wait_ready(10)
        url = endpoint_url(running)

        async def run(client: Any) -> tuple[list[str], str, Any]:
            names = [t.name for t in (await client.list_tools()).tools]
            found = await client.call_tool("notes.search", {"query": "q"})
            with pytest.raises(MCPError) as refused:
                await client.call_tool("impostor.search", {"query": "q"})
            return names, found.content[0].text, refused.value.error

        names, found, refused = with_client(url, run)
        running.stop()  # before the upstreams: its streams to them end first
    assert "notes.search" in names and not any(n.startswith("impostor.") for n in names)
    assert found == "found: q"
    assert refused.code == -32013 and refused.data["code"] == "upstream_unavailable"
