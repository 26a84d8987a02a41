"""Issue 28 items 1-3 end to end: a real ``agent-sidecar serve`` process exports over OTLP to a
real receiver (the collector's gRPC TraceService and MetricsService from
``opentelemetry-proto``, on loopback) the spans and metrics of a tool call, a streamed model
call, an MCP call and a denied call; every call's span continues the agent's ``traceparent``
and follows the GenAI / MCP semantic conventions; no prompt, argument or key is an attribute.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import requests
import yaml

from examples.demo.model_server import ModelServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.support.mcp_gateway import gateway_overrides
from tests.support.mcp_upstream import HttpMcpServer
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-provider-telemetry-0123456789abcdefghij"
AGENT_KEY = "agent-api-key-telemetry-must-go-nowhere"
PROMPT = "the secret plan is sapphire"
ARGUMENT = "needle-argument-value-42"
SERVER, INTERNAL, CLIENT = 2, 1, 3  # OTLP span kinds
STATUS_ERROR = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traceparent(n: int) -> tuple[str, str, str]:
    trace_id, span_id = f"{n:02x}" * 16, f"{n + 0x40:02x}" * 8
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def serve_config(tmp_path: Path, tools_url: str, models_url: str, notes: Any, otlp: str) -> dict:
    """The demo config, pointed at the test's upstreams, with telemetry to ``otlp``."""
    raw = yaml.safe_load((ROOT / "examples" / "demo" / "config.yaml").read_text())
    key_file = tmp_path / "openai.key"
    key_file.write_text(PROVIDER_KEY + "\n")
    for target in raw["targets"].values():
        target["base_url"] = tools_url
        target.pop("auth", None)
    mcp = gateway_overrides(tmp_path, notes, stdio=False)
    raw["targets"] |= mcp["targets"]
    # One worker: the admin listener's Prometheus registry is worker 0's (OTLP gets all).
    raw["server"] = {"listen": [f"unix://{tmp_path}/agent.sock"], "workers": 1}
    raw.update(
        identity={"mode": "static", "spiffe_id": "spiffe://demo.example/agent/support"},
        policy={"dir": mcp["policy"]["dir"]},
        audit={
            "path": str(tmp_path / "audit.log"),
            "signing_key": str(tmp_path / "audit-signing.key"),
        },
        state={"dir": str(tmp_path / "state")},
        approvals={"listen": f"unix://{tmp_path}/approvals.sock"},
        admin={"listen": f"127.0.0.1:{_free_port()}"},
        providers={"openai": {"base_url": models_url, "key_file": str(key_file)}},
        models={"gpt-small": {"provider": "openai", "model": "gpt-4o-mini"}},
        frontdoor={"listen": f"127.0.0.1:{_free_port()}"},
        mcp={"listen": f"127.0.0.1:{_free_port()}"},
        mcp_servers=mcp["mcp_servers"],
        telemetry={
            "endpoint": otlp,
            "batch_delay_s": 0.2,
            "metrics_interval_s": 0.5,
            "resource_attributes": {"deployment.environment.name": "test"},
        },
    )
    return raw


@pytest.fixture
def stack(tmp_path, tools):
    """A real serve process with every kind of call configured, and the OTLP receiver."""
    from tests.support.running import serve_process

    with OtlpReceiver() as receiver, ModelServer() as models, HttpMcpServer() as notes:
        config = serve_config(tmp_path, tools.url, models.url, notes, receiver.grpc_endpoint)
        with serve_process(tmp_path, config) as (proc, address):
            yield {
                "receiver": receiver,
                "models": models,
                "tools": tools,
                "address": address,
                "config": config,
                "proc": proc,
            }


def _tool_call(address: str, tool: str, args: dict, traceparent: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = sidecar_pb2_grpc.SidecarStub(channel)
        return stub.CallTool(
            sidecar_pb2.CallToolRequest(tool=tool, arguments_json=json.dumps(args)),
            metadata=[("traceparent", traceparent)],
            timeout=20,
        )


def _mcp_call(url: str, traceparent: str) -> tuple[str, dict]:
    """initialize, then tools/call notes.search over Streamable HTTP; (session id, result)."""
    headers = {"Accept": "application/json, text/event-stream", "traceparent": traceparent}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "telemetry-test", "version": "1"},
        },
    }
    answer = requests.post(url, json=init, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    session = answer.headers["Mcp-Session-Id"]
    headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    requests.post(url, json=note, headers=headers, timeout=20)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "notes.search", "arguments": {"query": ARGUMENT}},
    }
    answer = requests.post(url, json=call, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    text = answer.text
    if answer.headers.get("Content-Type", "").startswith("text/event-stream"):
        text = "".join(
            line[len("data:") :] for line in text.splitlines() if line.startswith("data:")
        )
    return session, json.loads(text)


def _by_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def _call_span(spans: list[ReceivedSpan], trace_id: str, parent: str) -> ReceivedSpan:
    [call] = [s for s in _by_trace(spans, trace_id) if s.parent_span_id == parent]
    return call


def _children(spans: list[ReceivedSpan], call: ReceivedSpan) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.parent_span_id == call.span_id}


def test_item2_serve_exports_semconv_spans_and_metrics_for_every_kind_of_call(stack):
    receiver, models, tools = stack["receiver"], stack["models"], stack["tools"]
    config = stack["config"]

    # 1. a tool call
    tp, tool_trace, tool_parent = _traceparent(0x11)
    reply = _tool_call(stack["address"], "tickets.get", {"id": ARGUMENT}, tp)
    assert reply.decision.effect == "allow"
    # 2. a denied call
    tp, deny_trace, deny_parent = _traceparent(0x22)
    with pytest.raises(grpc.RpcError) as denied:
        _tool_call(stack["address"], "tickets.close", {"id": ARGUMENT}, tp)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # 3. a streamed model call through the front door
    tp, model_trace, model_parent = _traceparent(0x33)
    front = f"http://{config['frontdoor']['listen']}/v1"
    client = openai.OpenAI(
        base_url=front, api_key=AGENT_KEY, max_retries=0, default_headers={"traceparent": tp}
    )
    stream = client.chat.completions.create(
        model="gpt-small", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"echo: {PROMPT}"
    # 4. an MCP call
    tp, mcp_trace, mcp_parent = _traceparent(0x44)
    session, answer = _mcp_call(f"http://{config['mcp']['listen']}/mcp", tp)
    assert answer["result"]["content"][0]["text"] == f"found: {ARGUMENT}"

    def all_four() -> list[ReceivedSpan] | None:
        spans = receiver.spans()
        parents = {(s.trace_id, s.parent_span_id) for s in spans}
        wanted = {
            (tool_trace, tool_parent),
            (deny_trace, deny_parent),
            (model_trace, model_parent),
            (mcp_trace, mcp_parent),
        }
        return spans if wanted <= parents and len(spans) >= 14 else None

    spans = wait_for(all_four, what="the four calls' spans")

    # The tool call: one SERVER span per the execute_tool convention, in the agent's trace,
    # below the agent's span; attest, decide and relay its children; the upstream's
    # traceparent continues below the relay span.
    tool = _call_span(spans, tool_trace, tool_parent)
    assert (tool.name, tool.kind) == ("execute_tool tickets.get", SERVER)
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "tickets.get"
    assert tool.attributes["agent_sidecar.effect"] == "allow"
    assert tool.attributes["agent_sidecar.code"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{32}", tool.attributes["agent_sidecar.policy.revision"])
    assert tool.attributes["agent_sidecar.decision.id"] == reply.decision.decision_id
    assert tool.resource["service.name"] == "agent-sidecar"
    assert tool.resource["deployment.environment.name"] == "test"
    children = _children(spans, tool)
    assert {"attest", "decide", "relay"} <= set(children)
    assert children["relay"].kind == CLIENT and children["decide"].kind == INTERNAL
    [received] = [r for r in tools.received if r.path.startswith("/tickets/")]
    assert received.headers["traceparent"] == f"00-{tool_trace}-{children['relay'].span_id}-01"

    # The denied call: its span says why (error.type, the effect), and nothing was relayed.
    deny = _call_span(spans, deny_trace, deny_parent)
    assert deny.name == "execute_tool tickets.close" and deny.status_code == STATUS_ERROR
    assert deny.attributes["agent_sidecar.effect"] == "deny"
    assert deny.attributes["error.type"] == "policy_deny"
    assert "relay" not in _children(spans, deny)

    # The streamed model call: chat on the provider's model, with its usage.
    model = _call_span(spans, model_trace, model_parent)
    assert model.name == "chat gpt-4o-mini"
    assert model.attributes["gen_ai.operation.name"] == "chat"
    assert model.attributes["gen_ai.provider.name"] == "openai"
    assert model.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert model.attributes["gen_ai.request.stream"] is True
    assert model.attributes["gen_ai.usage.input_tokens"] > 0
    assert model.attributes["gen_ai.usage.output_tokens"] > 0
    model_children = _children(spans, model)
    assert {"attest", "decide", "relay"} <= set(model_children)
    [sent] = models.received
    assert sent.headers["traceparent"].startswith(f"00-{model_trace}-")

    # The MCP call: the MCP conventions, the session id only as a digest.
    mcp = _call_span(spans, mcp_trace, mcp_parent)
    assert mcp.name == "tools/call notes.search"
    assert mcp.attributes["mcp.method.name"] == "tools/call"
    assert mcp.attributes["gen_ai.tool.name"] == "notes.search"
    assert mcp.attributes["gen_ai.operation.name"] == "execute_tool"
    assert mcp.attributes["mcp.session.id"].startswith("sha256:")
    assert session not in json.dumps([s.attributes for s in spans])
    assert "relay" in _children(spans, mcp)

    # Never a prompt, an argument or a key in any attribute (log obligations: not full).
    exported = json.dumps([[s.name, s.attributes, s.resource] for s in spans])
    for secret in (PROMPT, ARGUMENT, AGENT_KEY, PROVIDER_KEY, "sapphire"):
        assert secret not in exported

    # Metrics over OTLP: the GenAI client metrics beside ours.
    def genai_points() -> list | None:
        points = list(receiver.metric_points("gen_ai.client.operation.duration"))
        ops = {a.get("gen_ai.operation.name") for a, _ in points}
        tokens = {
            a.get("gen_ai.token.type")
            for a, _ in receiver.metric_points("gen_ai.client.token.usage")
        }
        return points if {"chat", "execute_tool"} <= ops and {"input", "output"} <= tokens else None

    points = wait_for(genai_points, what="the GenAI metrics")
    chat = [p for a, p in points if a.get("gen_ai.operation.name") == "chat"]
    assert chat and all(p.count >= 1 for p in chat)
    denied_points = [a for a, _ in points if a.get("error.type") == "policy_deny"]
    assert denied_points and denied_points[0]["gen_ai.tool.name"] == "tickets.close"
    assert {"agent_sidecar.calls", "agent_sidecar.decisions"} <= receiver.metric_names()

    # ... and the same GenAI metrics in Prometheus, on the admin listener.
    scrape = requests.get(f"http://{config['admin']['listen']}/metrics", timeout=10).text
    assert re.search(
        r'gen_ai_client_operation_duration_seconds_count\{[^}]*gen_ai_operation_name="chat"',
        scrape,
    )
    assert re.search(r'gen_ai_client_token_usage_count\{[^}]*gen_ai_token_type="output"', scrape)
    # a live collector: nothing dropped
    assert not re.search(r"^agent_sidecar_telemetry_dropped_total\{.*\} [1-9]", scrape, re.M)


def test_item1_telemetry_off_the_sdk_is_never_imported(tmp_path, tools):
    """A fresh interpreter builds the whole sidecar with telemetry off: no OpenTelemetry SDK
    module is loaded (zero cost when off). With it on, the SDK is there."""
    code = """
import sys, json, sidecar
from pathlib import Path
from tests.support.running import sidecar_settings
from sidecar.app import Sidecar
tmp = Path(sys.argv[1])
extra = json.loads(sys.argv[2])
sidecar_app = Sidecar.build(sidecar_settings(tmp, "http://127.0.0.1:9", **extra))
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
sidecar_app.close()
print(json.dumps(loaded))
"""
    import subprocess

    def loaded(name: str, extra: dict) -> list[str]:
        (tmp_path / name).mkdir()
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name), json.dumps(extra)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert loaded("off", {}) == []
    on = loaded("on", {"telemetry": {"endpoint": "http://127.0.0.1:9"}})
    assert "opentelemetry.sdk.trace" in on


def test_item1_the_http_protocol_exports_too(tmp_path, start_sidecar, tools):
    """protocol: http: OTLP/HTTP protobuf to the receiver's /v1/traces and /v1/metrics."""
    with OtlpReceiver() as receiver:
        running = start_sidecar(
            tools.url,
            telemetry={
                "endpoint": receiver.http_endpoint,
                "protocol": "http",
                "batch_delay_s": 0.2,
                "metrics_interval_s": 0.5,
            },
        )
        tp, trace_id, parent = _traceparent(0x55)
        _tool_call(running.address, "tickets.get", {"id": "7"}, tp)
        spans = wait_for(
            lambda: [
                s for s in receiver.spans() if s.trace_id == trace_id and s.parent_span_id == parent
            ],
            what="the span over HTTP",
        )
        assert spans[0].name == "execute_tool tickets.get"
        wait_for(
            lambda: "gen_ai.client.operation.duration" in receiver.metric_names(),
            what="metrics over HTTP",
        )
        running.stop()


def test_item1_sampling_follows_the_agents_flag_and_the_ratio(tmp_path, start_sidecar, tools):
    """sampling_ratio 0: a call without traceparent is not exported; a caller's sampled
    traceparent is followed (ParentBased), an unsampled one is not."""
    with OtlpReceiver() as receiver:
        running = start_sidecar(
            tools.url,
            telemetry={
                "endpoint": receiver.grpc_endpoint,
                "sampling_ratio": 0.0,
                "batch_delay_s": 0.2,
            },
        )
        _, unsampled_trace, unsampled_parent = _traceparent(0x66)
        _tool_call(
            running.address,
            "tickets.get",
            {"id": "1"},
            f"00-{unsampled_trace}-{unsampled_parent}-00",
        )
        with running.client() as client:  # no traceparent: a root, ratio 0
            client.call_tool("tickets.get", {"id": "2"})
        tp, trace_id, _ = _traceparent(0x77)
        _tool_call(running.address, "tickets.get", {"id": "3"}, tp)
        wait_for(
            lambda: [s for s in receiver.spans() if s.trace_id == trace_id], what="the sampled call"
        )
        running.stop()  # flushes what is queued
        traces = {s.trace_id for s in receiver.spans()}
        assert traces == {trace_id}
