"""Review of issue 28: spans never carry an exception (finding 4); a bad ``ca_file`` fails the
start whichever the protocol (finding 6); an upstream's model name never becomes a label
(finding 5). Real sidecars, a real OTLP receiver on loopback."""

from __future__ import annotations

import datetime
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from examples.demo.model_server import ModelServer
from examples.demo.tools_server import ToolServer
from sidecar.app import Sidecar
from sidecar.config import ConfigError
from sidecar.errors import SidecarError
from sidecar.metrics import NAME_CAP, Metrics
from sidecar.telemetry.export import Telemetry
from sidecar.telemetry.settings import TelemetrySettings
from tests.support.fleet import chat_at_once, fleet_config, start_replicas
from tests.support.otlp_receiver import OtlpReceiver, wait_for
from tests.support.running import RunningSidecar, sidecar_settings

NEEDLE = "USERTOKEN-NEEDLE-4b1d"


def test_review_4_no_span_records_an_exception_or_its_message(tmp_path, tools):
    """A call refused by an exception inside a child span (a user token nobody can check):
    the spans carry the outcome code only, no `exception` event (message, stack trace) and
    no status message from the exception."""
    with OtlpReceiver() as receiver:
        running = RunningSidecar(
            sidecar_settings(
                tmp_path, tools.url,
                telemetry={"endpoint": receiver.grpc_endpoint, "batch_delay_s": 0.05},
            )
        )  # fmt: skip
        try:
            with running.client() as client, pytest.raises(SidecarError):
                client.call_tool("tickets.get", {"id": "1"}, user_token=f"eyJ0.{NEEDLE}.sig")
            spans = wait_for(
                lambda: (s := receiver.spans()) and any(x.name == "attest" for x in s) and s,
                what="the call's spans",
            )
        finally:
            running.stop()
    call = next(s for s in spans if s.name.startswith("execute_tool"))
    assert call.attributes["error.type"] == "user_token_unexpected"
    assert call.status_message == "user_token_unexpected"  # the outcome code, nothing else
    for span in spans:
        assert "exception" not in span.events, span.name
        assert "users.issuers" not in span.status_message, span.name
        assert NEEDLE not in repr(span), span.name


def _ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "review-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return certificate.public_bytes(serialization.Encoding.PEM)


KEY_PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read ca_file"),
        (b"", "holds no PEM certificate"),
        (b"not a certificate\n", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "holds no PEM certificate"),
        (KEY_PEM, "holds no PEM certificate"),  # a key, not a CA
        (b"\xff\xfe" * 10, "holds no PEM certificate"),
        (b"A" * (1024 * 1024 + 1), "larger than"),
    ],
    # stable ids: KEY_PEM is a fresh key per process, and xdist's workers must collect alike
    ids=["missing", "empty", "text", "bad-pem", "private-key", "binary", "oversized"],
)  # fmt: skip
def test_review_6_a_bad_ca_file_fails_the_start_for_both_protocols(
    tmp_path, tools, protocol, content, why
):
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    settings = sidecar_settings(
        tmp_path, tools.url,
        telemetry={"endpoint": "https://otel.example.com:4317", "protocol": protocol,
                   "ca_file": str(ca)},
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        Sidecar.build(settings)
    assert "telemetry:" in str(caught.value) and why in str(caught.value)
    assert str(ca) in str(caught.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_review_6_a_good_ca_file_is_accepted(tmp_path, protocol):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_ca_pem())
    settings = TelemetrySettings(
        endpoint="https://otel.example.com:4317", protocol=protocol, ca_file=ca
    )
    Telemetry(settings, lambda *a: None).shutdown()


def _model_record(i: int, response_model: str) -> dict:
    return {
        "decision_id": f"d{i}",
        "rpc": "ChatCompletions",
        "action": {"kind": "model", "name": "gpt-small", "target": "openai"},
        "model": {"provider": "openai", "model": "gpt-4o-mini", "response_model": response_model,
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        "decision": {"effect": "allow", "code": "ok"},
        "outcome": {"status": "OK", "code": "ok", "relayed": True},
        "latency_ms": {"total": 1.0},
    }  # fmt: skip


def test_review_5_the_upstreams_model_name_never_becomes_a_label():
    """A hostile upstream answering with a new model name every time (even valid-looking
    ones): gen_ai.response.model stays the configured provider model, one value per alias,
    in Prometheus and in what reaches the OTLP sink; the resolved-name budget is untouched."""
    metrics = Metrics(
        ["openai"], models=["gpt-small", "gpt-4o-mini"], providers={"openai": "openai"}
    )
    seen: list = []
    metrics.add_sink(seen.append)
    hostile = [f"gpt-evil-{i}" for i in range(NAME_CAP * 3)] + ["x" * 5000, "a\nb", 'q"', ""]
    for i, name in enumerate(hostile):
        metrics.observe(_model_record(i, name))
    text = generate_latest(metrics.registry).decode()
    responses = set(re.findall(r'gen_ai_response_model="([^"]*)"', text))
    assert responses == {"gpt-4o-mini"}
    assert {o.genai.attributes["gen_ai.response.model"] for o in seen} == {"gpt-4o-mini"}
    series = {line.split(" ")[0] for line in text.splitlines()
              if line.startswith("gen_ai_client_operation_duration_seconds_count")}  # fmt: skip
    assert len(series) == 1
    # a resolved tool name still gets its own label: the upstream used none of the budget
    metrics.observe({
        "decision_id": "t", "rpc": "CallTool",
        "action": {"kind": "tool", "name": "resolved.tool"},
        "decision": {"effect": "allow", "code": "ok"},
        "outcome": {"status": "OK", "code": "ok"}, "latency_ms": {"total": 1.0},
    })  # fmt: skip
    assert 'gen_ai_tool_name="resolved.tool"' in generate_latest(metrics.registry).decode()


def test_review_5_a_hostile_upstream_through_a_real_serve(tmp_path):
    """A real serve and front door; the upstream names a different model in every answer."""
    with ModelServer() as models, ToolServer() as tools:
        [replica] = start_replicas(
            tmp_path, 1, lambda home: fleet_config(home, tools.url, {}, models.url)
        )
        try:
            with replica.client() as client:
                task = client.start_task("review-5").task_id
            for i in range(12):
                models.script(answer=_answer(f"evil-model-{i}"))
                assert chat_at_once([replica], task, 1) == ["ok"]
            text = replica.metrics()
        finally:
            replica.stop()
    responses = set(re.findall(r'gen_ai_response_model="([^"]*)"', text))
    assert responses and not any("evil" in r for r in responses), responses


def _answer(model: str) -> dict:
    return {
        "id": "chatcmpl-x", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip


def _sidecar(tmp_path, name: str, tools_url: str, **telemetry) -> RunningSidecar:
    directory = tmp_path / name
    directory.mkdir()
    return RunningSidecar(sidecar_settings(directory, tools_url, telemetry=telemetry))


def test_review_7_trust_caller_sampling_false_applies_the_ratio_to_every_call(tmp_path, tools):
    """`trust_caller_sampling: false`: a caller's sampled flag cannot force export (ratio 0:
    nothing exported) nor suppress it (ratio 1: an unsampled caller's call is exported, in
    the caller's trace)."""
    from tests.e2e.test_telemetry_serve import _tool_call, _traceparent

    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint
        all_of_them = _sidecar(
            tmp_path, "ratio1", tools.url, endpoint=endpoint, batch_delay_s=0.05,
            sampling_ratio=1.0, trust_caller_sampling=False,
        )  # fmt: skip
        try:
            _, unsampled, parent = _traceparent(0x51)
            _tool_call(all_of_them.address, "tickets.get", {"id": "1"},
                       f"00-{unsampled}-{parent}-00")  # fmt: skip
            wait_for(
                lambda: any(s.trace_id == unsampled for s in receiver.spans()),
                what="the unsampled caller's call, exported",
            )
        finally:
            all_of_them.stop()
        none = _sidecar(
            tmp_path, "ratio0", tools.url, endpoint=endpoint, batch_delay_s=0.05,
            sampling_ratio=0.0, trust_caller_sampling=False,
        )  # fmt: skip
        try:
            traceparent, sampled, _ = _traceparent(0x52)
            _tool_call(none.address, "tickets.get", {"id": "2"}, traceparent)
        finally:
            none.stop()  # flushes whatever was queued
        assert not any(s.trace_id == sampled for s in receiver.spans())


def test_review_7_trust_caller_sampling_is_a_checked_boolean(tmp_path):
    from sidecar.config import parse_settings

    raw = {
        "identity": {"mode": "static", "spiffe_id": "spiffe://demo.example/agent/a"},
        "telemetry": {"endpoint": "http://127.0.0.1:4317"},
    }
    assert parse_settings(raw, source=tmp_path / "c.yaml").telemetry.trust_caller_sampling
    raw["telemetry"]["trust_caller_sampling"] = "no"
    with pytest.raises(ConfigError, match="trust_caller_sampling"):
        parse_settings(raw, source=tmp_path / "c.yaml")
