"""Issue 28 item 1-2: the ``telemetry`` section is validated once with clear errors (and the
webhook's fleet-wide setting the same way); the collector's headers file never shows a value
in an error; the attribute names are the semantic conventions' own."""

from __future__ import annotations

import pytest

from sidecar.app import Sidecar
from sidecar.config import ConfigError, parse_settings
from sidecar.telemetry import semconv
from sidecar.telemetry.headers import HeadersError, read_headers
from sidecar.webhook.settings import SidecarTemplate
from tests.support.running import sidecar_settings

SECRET_VALUE = "Bearer otlp-secret-9f8e7d6c5b4a"


def _parse(tmp_path, **telemetry):
    raw = {
        "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/a"},
        "telemetry": telemetry,
    }
    return parse_settings(raw, source=tmp_path / "config.yaml")


def test_item1_off_by_default(tmp_path):
    settings = _parse(tmp_path)
    assert not settings.telemetry.enabled


@pytest.mark.parametrize(
    ("telemetry", "key", "why"),
    [
        ({"endpoint": "otel:4317"}, "telemetry.endpoint", "not an http:// or https:// URL"),
        ({"endpoint": "ftp://127.0.0.1:4317"}, "telemetry.endpoint", "not an http://"),
        (
            {"endpoint": "http://otel.example.com:4317"},
            "telemetry.endpoint",
            "plaintext to a host that is not loopback",
        ),
        (
            {"endpoint": "http://10.0.0.5:4317"},
            "telemetry.endpoint",
            "plaintext to a host that is not loopback",
        ),
        (
            {"endpoint": "https://user:pw@otel.example.com:4317"},
            "telemetry.endpoint",
            "must not carry credentials",
        ),
        (
            {"endpoint": "https://otel.example.com:4317/v1/traces"},
            "telemetry.endpoint",
            "a gRPC endpoint is host and port",
        ),
        ({"endpoint": "https://otel.example.com:99999"}, "telemetry.endpoint", "bad port"),
        (
            {"endpoint": "http://127.0.0.1:4317", "ca_file": "/etc/ca.pem"},
            "telemetry.ca_file",
            "plaintext",
        ),
        ({"protocol": "thrift"}, "telemetry.protocol", "not one of grpc, http"),
        ({"sampling_ratio": 1.5}, "telemetry.sampling_ratio", "between 0 and 1"),
        ({"sampling_ratio": "all"}, "telemetry.sampling_ratio", ""),
        ({"queue_size": 0}, "telemetry.queue_size", "between 1 and 1000000"),
        ({"export_timeout_s": 0}, "telemetry.export_timeout_s", "> 0"),
        ({"resource_attributes": {"bad key!": "x"}}, "telemetry.resource_attributes", ""),
        ({"resource_attributes": {"a": "x" * 2000}}, "telemetry.resource_attributes", ""),
        ({"endpoint": "https://otel.example.com:4317", "surprise": 1}, "telemetry", ""),
    ],
)
def test_item1_bad_settings_are_clear_errors(tmp_path, telemetry, key, why):
    with pytest.raises(ConfigError) as caught:
        _parse(tmp_path, **telemetry)
    assert key in str(caught.value) and why in str(caught.value)


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:4317", "http://localhost:4317", "http://[::1]:4317", "https://o.example"],
)
def test_item1_plaintext_to_loopback_and_tls_anywhere_are_accepted(tmp_path, endpoint):
    assert _parse(tmp_path, endpoint=endpoint).telemetry.enabled


def test_item1_http_protocol_takes_a_base_path(tmp_path):
    settings = _parse(tmp_path, endpoint="https://otel.example.com/otlp", protocol="http")
    assert settings.telemetry.protocol == "http"


def test_item1_the_headers_file_is_read(tmp_path):
    path = tmp_path / "headers"
    path.write_text(f"# the collector's key\nAuthorization: {SECRET_VALUE}\n\nX-Tenant: a\n")
    assert read_headers(path) == {"authorization": SECRET_VALUE, "x-tenant": "a"}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (f"Authorization {SECRET_VALUE}\n".encode(), "line 1 is not 'Name: value'"),
        (f"ok: 1\nBad Name: {SECRET_VALUE}\n".encode(), "line 2 is not 'Name: value'"),
        (f"Authorization: {SECRET_VALUE}\rX-Injected: 1\n".encode(), "line 1"),
        (f"Authorization: {SECRET_VALUE}\x00\n".encode(), "not printable"),
        (f"A: {SECRET_VALUE}\na: {SECRET_VALUE}\n".encode(), "set twice"),
        (b"Authorization:\n", "empty"),
        (b"\xff\xfe" + SECRET_VALUE.encode(), "not UTF-8"),
        (b"A: " + b"x" * (70 * 1024), "larger than"),
    ],
)
def test_item1_a_bad_headers_file_fails_naming_the_line_never_the_value(tmp_path, content, why):
    path = tmp_path / "headers"
    path.write_bytes(content)
    with pytest.raises(HeadersError) as caught:
        read_headers(path)
    assert why in str(caught.value)
    assert "otlp-secret" not in str(caught.value)


def test_item1_a_bad_headers_file_fails_the_start_before_listening(tmp_path, tools):
    path = tmp_path / "headers"
    path.write_text(f"Authorization {SECRET_VALUE}\n")
    settings = sidecar_settings(
        tmp_path,
        tools.url,
        telemetry={"endpoint": "https://otel.example.com:4317", "headers_file": str(path)},
    )
    with pytest.raises(ConfigError) as caught:
        Sidecar.build(settings)
    assert "telemetry:" in str(caught.value) and "line 1" in str(caught.value)
    assert "otlp-secret" not in str(caught.value)
    missing = sidecar_settings(
        tmp_path,
        tools.url,
        telemetry={
            "endpoint": "https://otel.example.com:4317",
            "headers_file": str(tmp_path / "nope"),
        },
    )
    with pytest.raises(ConfigError, match="cannot read"):
        Sidecar.build(missing)


def test_item2_attribute_names_are_the_semantic_conventions():
    """Held equal to opentelemetry-semantic-conventions' GenAI and MCP names."""
    from opentelemetry.semconv._incubating.attributes import (
        error_attributes,
    )
    from opentelemetry.semconv._incubating.attributes import (
        gen_ai_attributes as g,
    )
    from opentelemetry.semconv._incubating.attributes import (
        mcp_attributes as m,
    )
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

    assert semconv.OPERATION == g.GEN_AI_OPERATION_NAME
    assert semconv.PROVIDER == g.GEN_AI_PROVIDER_NAME
    assert semconv.REQUEST_MODEL == g.GEN_AI_REQUEST_MODEL
    assert semconv.RESPONSE_MODEL == g.GEN_AI_RESPONSE_MODEL
    assert semconv.REQUEST_STREAM == g.GEN_AI_REQUEST_STREAM
    assert semconv.TOOL_NAME == g.GEN_AI_TOOL_NAME
    assert semconv.INPUT_TOKENS == g.GEN_AI_USAGE_INPUT_TOKENS
    assert semconv.OUTPUT_TOKENS == g.GEN_AI_USAGE_OUTPUT_TOKENS
    assert semconv.TOKEN_TYPE == g.GEN_AI_TOKEN_TYPE
    assert semconv.TOOL_ARGUMENTS == g.GEN_AI_TOOL_CALL_ARGUMENTS
    assert semconv.TOOL_RESULT == g.GEN_AI_TOOL_CALL_RESULT
    assert semconv.INPUT_MESSAGES == g.GEN_AI_INPUT_MESSAGES
    assert semconv.OUTPUT_MESSAGES == g.GEN_AI_OUTPUT_MESSAGES
    assert semconv.MCP_METHOD == m.MCP_METHOD_NAME
    assert semconv.MCP_SESSION == m.MCP_SESSION_ID
    assert semconv.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION == "gen_ai.client.operation.duration"
    assert gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE == "gen_ai.client.token.usage"
    operations = {v.value for v in g.GenAiOperationNameValues}
    assert {"chat", "embeddings", "execute_tool"} <= operations
    assert {v.value for v in g.GenAiProviderNameValues} >= {"openai", "anthropic"}


FULL_DOC = {
    "decision_id": "d1",
    "rpc": "CallTool",
    "action": {
        "kind": "tool",
        "name": "payments.refund",
        "arguments": {"log": "full", "value": {"note": "needle"}},
    },
    "decision": {"effect": "allow", "code": "ok", "obligations": {"log": "full"}},
    "outcome": {"status": "OK", "code": "ok"},
    "upstream": {"target": "payments", "result": {"log": "full", "value": {"ok": 1}}},
}


def test_item2_content_needs_log_full_and_capture():
    assert "gen_ai.tool.call.arguments" not in semconv.call_attributes(FULL_DOC, {})
    captured = semconv.call_attributes(FULL_DOC, {}, capture_content=True)
    assert "needle" in captured["gen_ai.tool.call.arguments"]
    assert captured["gen_ai.tool.call.result"] == '{"ok": 1}'
    redacted = FULL_DOC | {
        "decision": {"effect": "allow", "code": "ok", "obligations": {"log": "redacted"}}
    }
    assert "gen_ai.tool.call.arguments" not in semconv.call_attributes(
        redacted, {}, capture_content=True
    )


def test_item2_the_mcp_session_is_a_digest_and_hostile_names_are_cut():
    doc = {
        "decision_id": "d",
        "rpc": "MCP tools/call",
        "action": {"kind": "mcp", "name": "n" * 10_000, "method": "tools/call"},
        "outcome": {"status": "OK", "code": "ok"},
    }
    attributes = semconv.call_attributes(doc, {}, session="0123456789abcdef")
    assert attributes["mcp.session.id"].startswith("sha256:")
    assert "0123456789abcdef" not in attributes["mcp.session.id"]
    assert len(attributes["gen_ai.tool.name"]) <= 256
    assert len(semconv.span_name(doc)) < 300


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ({"telemetry_endpoint": "http://otel.observability:4317"}, "telemetry_endpoint:"),
        ({"telemetry_endpoint": "otel:4317"}, "telemetry_endpoint:"),
        ({"telemetry_headers_secret": "otel-headers"}, "telemetry_endpoint is empty"),
        (
            {
                "telemetry_endpoint": "https://o.example:4317",
                "telemetry_headers_secret": "Bad_Name",
            },
            "not a Kubernetes object name",
        ),
    ],
)
def test_item1_the_webhooks_fleet_setting_is_checked_as_the_sidecar_checks_it(template, why):
    with pytest.raises(ValueError, match=why):
        SidecarTemplate(**template)
