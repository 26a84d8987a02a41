"""Issue 32 item 8: a call that fails on the state store tells the agent only the stable code
``state_unavailable`` (and a fixed sentence), never where the database lives. Every surface
the agent sees, against a real PostgreSQL that is stopped: gRPC (status message, the packed
``CallError`` and its decision reasons), the front door's body, the MCP endpoint's JSON-RPC
error, and the audit record's outcome. Operators get the details in the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
import requests
from google.rpc import status_pb2

from examples.demo.model_server import ModelServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.state import StateError
from sidecar.state.postgres import describe_dsn
from tests.conftest import all_audit_lines
from tests.support.mcp_gateway import TASK, endpoint_url, gateway_overrides
from tests.support.mcp_upstream import HttpMcpServer

MODERN = "2026-07-28"


@pytest.fixture
def running(start_sidecar, tools, tmp_path, pg_state):
    with ModelServer() as models, HttpMcpServer() as notes:
        yield start_sidecar(
            tools.url,
            state=pg_state | {"postgres": pg_state["postgres"] | {"retry_interval_s": 0.05}},
            providers={"openai": {"base_url": models.url}},
            models={"gpt-small": {"provider": "openai"}},
            frontdoor={"listen": "127.0.0.1:0"},
            **gateway_overrides(tmp_path, notes, stdio=False),
        )


def _where(pg_state) -> tuple[str, ...]:
    """What names the database: none of it may reach the agent."""
    dsn = Path(pg_state["postgres"]["dsn_file"]).read_text().strip()
    described = describe_dsn(dsn)  # postgresql://127.0.0.1:PORT/DBNAME
    host_port, _, dbname = described.removeprefix("postgresql://").partition("/")
    port = host_port.rpartition(":")[2]
    return described, "postgresql", host_port, dbname, f"port {port}", f"{port}/"


def _grpc_refusal(call, request) -> tuple[grpc.StatusCode, str]:
    """The status code and all the text a gRPC refusal carries (message, packed details)."""
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=10)
    error = refused.value
    packed = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(packed)
    detail = sidecar_pb2.CallError()
    status.details[0].Unpack(detail)
    assert detail.code == "state_unavailable"
    text = "\n".join([error.details(), status.message, *detail.decision.reasons])
    return error.code(), text


def _mcp_tools_call(running, task: str) -> requests.Response:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        TASK: task,
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "notes.search", "arguments": {"query": "q"}, "_meta": meta},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "notes.search",
    }
    return requests.post(endpoint_url(running), json=body, headers=headers, timeout=10)


def test_item8_state_unavailable_names_no_database_on_any_surface_the_agent_sees(
    running, pg_server, pg_state, caplog
):
    caplog.set_level(logging.ERROR)
    stub = sidecar_pb2_grpc.SidecarStub(grpc.insecure_channel(running.address))
    task = stub.StartTask(sidecar_pb2.StartTaskRequest(intent="item 8"), timeout=10).task_id
    seen: list[str] = []
    pg_server.stop()
    try:
        tool = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "7"}')
        tool.task_id = task
        for _ in range(2):  # the call that finds the outage, and one refused without trying
            status, text = _grpc_refusal(stub.CallTool, tool)
            assert status == grpc.StatusCode.UNAVAILABLE
            seen.append(text)
        status, text = _grpc_refusal(stub.StartTask, sidecar_pb2.StartTaskRequest(intent="another"))
        assert status == grpc.StatusCode.UNAVAILABLE
        seen.append(text)

        door = requests.post(
            running.sidecar.frontdoor.url + "/chat/completions",
            json={"model": "gpt-small", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-agent-sidecar-task-id": task},
            timeout=10,
        )
        assert door.status_code == 503
        assert door.json()["error"]["code"] == "state_unavailable"
        seen.append(door.text)

        mcp = _mcp_tools_call(running, task)
        assert mcp.json()["error"]["data"]["code"] == "state_unavailable"
        seen.append(mcp.text)
    finally:
        pg_server.start()

    records = [
        r
        for r in all_audit_lines(running.audit_path)
        if r.get("outcome", {}).get("code") == "state_unavailable"
    ]
    assert len(records) == 5
    seen += [json.dumps(r["outcome"]) for r in records]
    for text in seen:
        for secret in (*_where(pg_state), pg_server.password):
            # Before: "postgresql://127.0.0.1:PORT/DBNAME: the state database has been
            # unreachable for 0.1s; retrying in the background", on every surface.
            assert secret not in text, (secret, text)
        assert StateError.agent_message in text
    # Operators still learn where and why, from the log (never the password).
    logged = [getattr(r, "error", "") for r in caplog.records if r.msg == "state database failed"]
    assert len(logged) == 5
    assert all(_where(pg_state)[0] in line for line in logged)
    assert not any(pg_server.password in line for line in logged)
