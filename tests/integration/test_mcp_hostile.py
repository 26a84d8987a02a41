"""The MCP endpoint against what a hostile or broken client sends, spoken raw over HTTP:
malformed JSON-RPC, oversized messages, headers that disagree with the body, sessions that
do not exist, methods the sidecar does not serve. Each is refused with a stable JSON-RPC
error, audited where it got far enough, and nothing reaches an upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.support.mcp_gateway import endpoint_url, gateway_overrides
from tests.support.mcp_upstream import HttpMcpServer

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture
def notes():
    with HttpMcpServer() as server:
        yield server


@pytest.fixture
def running(notes, start_sidecar, tools, tmp_path):
    sidecar = start_sidecar(
        tools.url, **gateway_overrides(tmp_path, notes, stdio=False, max_message_bytes=4096)
    )
    yield sidecar
    sidecar.stop()


def post(running: Any, body: Any, headers: dict[str, str] | None = None, raw: bytes = b""):
    data = raw or json.dumps(body).encode()
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    return requests.post(
        endpoint_url(running), data=data, headers=base | (headers or {}), timeout=10
    )


def initialize(running: Any) -> str:
    answer = post(
        running,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}},
        },
    )
    assert answer.status_code == 200
    assert answer.json()["result"]["protocolVersion"] == "2025-11-25"
    return answer.headers["Mcp-Session-Id"]


def modern(method: str, params: dict[str, Any], **headers: str) -> tuple[dict, dict]:
    body = {"jsonrpc": "2.0", "id": 9, "method": method, "params": params | {"_meta": ENVELOPE}}
    sent = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method} | headers
    return body, sent


def upstream_calls(running: Any) -> list[dict[str, Any]]:
    records = [json.loads(x) for x in running.audit_path.read_text().splitlines()]
    return [r for r in records if r.get("type") == "call" and r["outcome"]["relayed"]]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "method": "tools/call"}', -32700),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
        (b'{"id": 1, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]}', -32602),
        (b'"\\ud800"', -32700),
    ],
)
def test_malformed_json_rpc_is_refused_and_audited(running, raw, code):
    answer = post(running, None, raw=raw)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["code"] == code and body["id"] is None
    assert body["error"]["data"]["code"] == "malformed_request"
    records = [json.loads(x) for x in running.audit_path.read_text().splitlines()]
    assert records[-1]["rpc"] == "MCP message"
    assert records[-1]["outcome"]["code"] == "malformed_request"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc": "2.0", "id": "\xed\xa0\x80", "method": "ping"}',  # a raw surrogate (CESU-8)
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping\xed\xa0\x80"}',
        '{"jsonrpc": "2.0", "id": "\\ud800", "method": "ping"}'.encode("utf-16"),
        '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'.encode("utf-16-le")[:-1] + b"\xd8",
    ],
)
def test_review_s10_strict_a_surrogate_in_any_encoding_is_malformed_not_an_internal_error(
    running, raw
):
    """Before: bytes holding a raw surrogate (or an escaped one in UTF-16) passed the strict
    reader and failed later with a 500 ``internal_error``; now a 400 like any malformed body."""
    answer = post(running, None, raw=raw)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["data"]["code"] == "malformed_request"
    records = [json.loads(x) for x in running.audit_path.read_text().splitlines()]
    assert records[-1]["outcome"]["code"] == "malformed_request"


def test_an_oversized_message_is_refused_before_it_is_read(running):
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"x": "a" * 10_000}}
    answer = post(running, big)
    assert answer.status_code == 413
    assert answer.json()["error"]["data"]["code"] == "request_too_large"
    assert not upstream_calls(running)


def test_the_wrong_content_type_is_refused(running):
    answer = requests.post(endpoint_url(running), data=b"{}", timeout=10)
    assert answer.status_code == 415


def test_a_request_without_a_session_or_envelope_is_refused(running):
    answer = post(running, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert answer.status_code == 400
    assert "Mcp-Session-Id is required" in answer.json()["error"]["message"]


def test_an_unknown_session_is_404(running):
    answer = post(
        running, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {"Mcp-Session-Id": "nope"}
    )
    assert answer.status_code == 404


def test_a_session_ends_with_delete(running):
    session = initialize(running)
    url = endpoint_url(running)
    assert requests.delete(url, headers={"Mcp-Session-Id": session}, timeout=10).status_code == 200
    listed = post(
        running, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {"Mcp-Session-Id": session}
    )
    assert listed.status_code == 404


@pytest.mark.parametrize(
    "method", ["completion/complete", "resources/subscribe", "sampling/createMessage", "x" * 500]
)
def test_a_method_the_sidecar_does_not_serve_is_refused_and_audited(running, method):
    session = initialize(running)
    body = {"jsonrpc": "2.0", "id": 3, "method": method, "params": {}}
    answer = post(running, body, {"Mcp-Session-Id": session}).json()
    assert answer["error"]["code"] == -32601
    assert answer["error"]["data"]["code"] == "method_not_allowed"
    record = json.loads(running.audit_path.read_text().splitlines()[-1])
    assert record["rpc"] == "MCP other" and record["outcome"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Mcp-Name": "notes.add"}, "Mcp-Name does not match"),
        ({}, "Mcp-Name does not match"),
        ({"Mcp-Method": "tools/list", "Mcp-Name": "notes.search"}, "Mcp-Method does not match"),
        (
            {"MCP-Protocol-Version": "2025-11-25", "Mcp-Name": "notes.search"},
            "MCP-Protocol-Version",
        ),
    ],
)
def test_stateless_headers_that_disagree_with_the_body_are_refused(running, headers, why):
    body, sent = modern(
        "tools/call", {"name": "notes.search", "arguments": {"query": "q"}}, **headers
    )
    answer = post(running, body, sent)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == -32020 and why in error["message"]
    assert not upstream_calls(running)


def test_stateless_headers_that_match_are_served(running):
    body, sent = modern("tools/list", {})
    answer = post(running, body, sent)
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert result["resultType"] == "complete" and result["cacheScope"] == "private"
    assert "notes.search" in [t["name"] for t in result["tools"]]
    # A name outside printable ASCII travels base64-encoded (the official SDK's form).
    body, sent = modern("tools/call", {"name": "notes.sëarch", "arguments": {}})
    sent["Mcp-Name"] = "=?base64?bm90ZXMuc8OrYXJjaA==?="
    unknown = post(running, body, sent).json()
    assert unknown["error"]["data"]["code"] == "unknown_tool"  # matched, then not found


def test_an_unsupported_stateless_revision_names_the_supported_ones(running):
    body, sent = modern("tools/list", {})
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    sent["MCP-Protocol-Version"] = "2099-01-01"
    error = post(running, body, sent).json()["error"]
    assert error["code"] == -32022
    assert error["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


@pytest.mark.parametrize(
    "params",
    [
        {"name": 7, "arguments": {}},
        {"name": "notes.search", "arguments": [1, 2]},
        {"name": "notes.search", "arguments": {}, "_meta": {"agent-sidecar.io/task_id": 5}},
        {"name": "", "arguments": {}},
    ],
)
def test_wrongly_typed_call_params_are_invalid_params(running, params):
    session = initialize(running)
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": params}
    error = post(running, body, {"Mcp-Session-Id": session}).json()["error"]
    assert error["code"] == -32602 and error["data"]["code"] == "malformed_request"
    assert not upstream_calls(running)


def test_notifications_and_responses_are_accepted_without_an_answer(running):
    session = initialize(running)
    for body in (
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 77, "result": {}},
    ):
        answer = post(running, body, {"Mcp-Session-Id": session})
        assert answer.status_code == 202 and answer.content == b""


def test_the_endpoint_on_a_unix_socket_is_closed_to_others(notes, start_sidecar, tools, tmp_path):
    import stat

    from tests.support.unix_http import UnixConnection

    path = tmp_path / "mcp.sock"
    overrides = gateway_overrides(tmp_path, notes, stdio=False, listen=f"unix://{path}")
    running = start_sidecar(tools.url, **overrides)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    connection = UnixConnection(str(path))
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}},
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    connection.request("POST", "/mcp", json.dumps(body), headers)
    answer = connection.getresponse()
    assert answer.status == 200
    assert json.loads(answer.read())["result"]["protocolVersion"] == "2025-06-18"
    session = answer.getheader("Mcp-Session-Id")
    listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    connection.request("POST", "/mcp", json.dumps(listed), headers | {"Mcp-Session-Id": session})
    tools_listed = json.loads(connection.getresponse().read())["result"]["tools"]
    assert "notes.search" in [t["name"] for t in tools_listed]
    record = json.loads(running.audit_path.read_text().splitlines()[-1])
    assert record["rpc"] == "MCP tools/list" and record["subject"]["attestation"] == "static"
    running.stop()
