"""Everything the sidecar cannot establish or understand ends the call, with a stable code,
an audit record, and nothing relayed unless policy allowed it."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import grpc
import pytest

from examples.demo.tools_server import Reply, ToolServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.client import InvalidRequest, PolicyDenied, Unavailable, UpstreamError
from sidecar.identity.dev_authority import DevAuthority
from tests.conftest import audit_lines


def _policy(tmp_path: Path, decision: str, name: str = "p") -> str:
    directory = tmp_path / name / "agentsidecar" / "authz"
    directory.mkdir(parents=True)
    (directory / "authz.rego").write_text(
        f"package agentsidecar.authz\n\nimport rego.v1\n\n{decision}\n"
    )
    return str(tmp_path / name)


BAD_DECISIONS = [
    ("undefined", "decision := 1 if false", "policy_undefined"),
    ("not_an_object", 'decision := "allow"', "policy_invalid_decision"),
    ("missing_effect", 'decision := {"reasons": []}', "policy_unknown_effect"),
    ("unknown_effect", 'decision := {"effect": "permit"}', "policy_unknown_effect"),
    ("unknown_key", 'decision := {"effect": "allow", "obligation": {}}', "policy_invalid_decision"),
    (
        "reasons_wrong_type",
        'decision := {"effect": "deny", "reasons": "no"}',
        "policy_invalid_decision",
    ),
    (
        "unknown_obligation",
        'decision := {"effect": "allow", "obligations": {"notify": "x"}}',
        "unknown_obligation",
    ),
    (
        "invalid_obligation",
        'decision := {"effect": "allow", "obligations": {"log": "everything"}}',
        "invalid_obligation",
    ),
    (
        "builtin_error",
        'decision := {"effect": "allow", "reasons": [base64url.decode("%%%")]}',
        "policy_error",
    ),
    (
        "conflict",
        'decision := {"effect": "allow"} if true\ndecision := {"effect": "deny"} if true',
        "policy_error",
    ),
]


@pytest.mark.parametrize(("case", "rego", "code"), BAD_DECISIONS, ids=[c[0] for c in BAD_DECISIONS])
def test_a_malformed_decision_denies_with_its_code(
    start_sidecar, tools, tmp_path, case, rego, code
):
    running = start_sidecar(tools.url, policy={"dir": _policy(tmp_path, rego)})
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == code
    assert denied.value.decision.effect == "deny"
    assert tools.received == []
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["code"] == code and record["outcome"]["relayed"] is False


# About a second of rego-cpp work.
SLOW_POLICY = (
    'decision := {"effect": "allow", "reasons": [sprintf("%v", '
    "[count([x | some x in numbers.range(1, 400000); y := x])])]}"
)


def test_a_slow_policy_times_out_and_denies(start_sidecar, tools, tmp_path):
    running = start_sidecar(
        tools.url, policy={"dir": _policy(tmp_path, SLOW_POLICY), "timeout_ms": 20}
    )
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"})
    assert denied.value.code == "policy_timeout"
    assert tools.received == []


def test_the_agents_deadline_bounds_policy_evaluation(start_sidecar, tools, tmp_path):
    """In threads (inline_max_ms: 0) the wait for policy is bounded by the agent's deadline."""
    policy = {"dir": _policy(tmp_path, SLOW_POLICY), "timeout_ms": 60000, "inline_max_ms": 0}
    running = start_sidecar(tools.url, policy=policy)
    with running.client() as client, pytest.raises(PolicyDenied) as denied:
        client.call_tool("tickets.get", {"id": "1"}, timeout_s=0.3)
    assert denied.value.code == "policy_timeout"


def test_a_slow_inline_evaluation_is_refused_and_moves_policy_to_the_threads(
    start_sidecar, tools, tmp_path
):
    """Inline evaluation cannot be interrupted: the slow one is still refused (its answer came
    after policy.timeout_ms), and from then on this revision is evaluated in threads, where
    the next slow evaluation is cut at the timeout."""
    policy = {
        "dir": _policy(tmp_path, SLOW_POLICY),
        "timeout_ms": 20,
        "inline_max_ms": 5,
        "memo_size": 0,  # the same input twice: evaluated twice, not remembered
    }
    running = start_sidecar(tools.url, policy=policy)
    assert running.sidecar.engine.inline
    with running.client() as client:
        for _ in range(2):
            with pytest.raises(PolicyDenied) as denied:
                client.call_tool("tickets.get", {"id": "1"}, timeout_s=60)
            assert denied.value.code == "policy_timeout"
            assert not running.sidecar.engine.inline
    assert tools.received == []


def test_an_unmet_credential_obligation_is_not_relayed(start_sidecar, tools, tmp_path):
    rego = (
        'decision := {"effect": "allow", "reasons": [], '
        '"obligations": {"credential": {"audience": "tickets", "ttl_s": 60}}}'
    )
    running = start_sidecar(tools.url, policy={"dir": _policy(tmp_path, rego)})
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "credential_unavailable"
    assert tools.received == []


def _raw_call(address: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/agentsidecar.v1.Sidecar/CallTool")
        with pytest.raises(grpc.RpcError) as failed:
            call(payload, timeout=10)
    return failed.value


def test_an_oversized_request_is_invalid_argument_and_audited(start_sidecar, tools):
    running = start_sidecar(tools.url, server={"max_request_bytes": 2048})
    with running.client() as client, pytest.raises(InvalidRequest) as failed:
        client.call_tool("tickets.create", {"title": "x" * 5000})
    assert failed.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.code == "request_too_large"
    assert "2048" in str(failed.value)
    assert tools.received == []
    assert audit_lines(running.audit_path)[0]["outcome"]["code"] == "request_too_large"


def test_undecodable_bytes_are_invalid_argument_and_audited(sidecar, tools):
    error = _raw_call(sidecar.address, b"\xff\xff\xff\xff not protobuf")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert audit_lines(sidecar.audit_path)[0]["outcome"]["code"] == "malformed_request"
    assert tools.received == []


@pytest.mark.parametrize(
    "arguments_json",
    [
        "not json",
        "[1, 2]",
        '{"id": 1, "id": 2}',
        '{"n": NaN}',
        "[" * 100000,
        '{"id": "1", "n": 1e400}',
        '{"id": "1", "a": ' + "[" * 500 + "]" * 500 + "}",
        '{"id": "1", "n": ' + "9" * 5000 + "}",
    ],
    ids=[
        "not_json",
        "not_object",
        "duplicate_key",
        "nan",
        "deep",
        "item13_beyond_a_double",
        "item13_500_deep",
        "item13_5000_digits",
    ],
)
def test_bad_arguments_are_invalid_argument(sidecar, tools, arguments_json):
    payload = sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json=arguments_json)
    error = _raw_call(sidecar.address, payload.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert tools.received == []
    assert audit_lines(sidecar.audit_path)[0]["outcome"]["code"] == "invalid_arguments"


def test_unknown_tool_is_not_found(sidecar, tools):
    with sidecar.client() as client, pytest.raises(InvalidRequest) as failed:
        client.call_tool("shell.exec", {"cmd": "id"})
    assert failed.value.status == grpc.StatusCode.NOT_FOUND
    assert failed.value.code == "unknown_tool"


@pytest.mark.parametrize("segment", ["..", ".", ""])
def test_path_arguments_cannot_escape_the_configured_path(sidecar, tools, segment):
    with sidecar.client() as client, pytest.raises(InvalidRequest):
        client.call_tool("tickets.get", {"id": segment})
    assert tools.received == []


def test_path_arguments_are_one_encoded_segment(sidecar, tools):
    with sidecar.client() as client:
        client.call_tool("tickets.get", {"id": "../../admin?x=1"})
    assert tools.received[0].path == "/tickets/..%2F..%2Fadmin%3Fx%3D1"


@pytest.mark.parametrize(
    ("http_status", "grpc_status"),
    [
        (404, grpc.StatusCode.NOT_FOUND),
        (409, grpc.StatusCode.ABORTED),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, grpc.StatusCode.UNAVAILABLE),
        (302, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_upstream_errors_map_to_grpc_statuses(start_sidecar, http_status, grpc_status):
    routes = {
        ("GET", "/tickets/"): lambda r: Reply(
            http_status, {"error": "nope"}, headers={"Location": "http://elsewhere.invalid/"}
        )
    }
    with ToolServer(routes) as upstream:
        running = start_sidecar(upstream.url)
        with running.client() as client, pytest.raises(UpstreamError) as failed:
            client.call_tool("tickets.get", {"id": "1"})
        assert len(upstream.received) == 1  # redirects are not followed
    assert failed.value.status == grpc_status
    assert failed.value.upstream_status == http_status
    assert json.loads(failed.value.upstream_body) == {"error": "nope"}
    record = audit_lines(running.audit_path)[0]
    assert record["upstream"]["status"] == http_status and record["outcome"]["relayed"] is True


def test_an_unreachable_upstream_is_unavailable(start_sidecar):
    with ToolServer() as upstream:
        url = upstream.url
    running = start_sidecar(url)  # the port is closed now
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "upstream_unavailable"


def test_a_slow_upstream_is_cut_at_the_agents_deadline(start_sidecar):
    routes = {("GET", "/tickets/"): lambda r: Reply(body={}, delay_s=3)}
    with ToolServer(routes) as upstream:
        running = start_sidecar(upstream.url)
        with running.client() as client, pytest.raises(Unavailable) as failed:
            client.call_tool("tickets.get", {"id": "1"}, timeout_s=0.5)
    assert failed.value.status == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_oversized_upstream_answer_is_refused(start_sidecar):
    routes = {("GET", "/tickets/"): lambda r: Reply(body=b"x" * 5000, content_type="text/plain")}
    with ToolServer(routes) as upstream:
        running = start_sidecar(upstream.url, relay={"max_response_bytes": 1000})
        with running.client() as client, pytest.raises(UpstreamError) as failed:
            client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "upstream_response_too_large"


def test_https_upstream_verified_against_the_configured_ca(start_sidecar, tmp_path):
    ca = DevAuthority("tls.example")
    issued = ca.issue_x509("spiffe://tls.example/upstream", dns_names=("localhost",))
    (tmp_path / "up.crt").write_bytes(issued.chain_pem)
    (tmp_path / "up.key").write_bytes(issued.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.x509_bundle_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "up.crt", tmp_path / "up.key")
    with ToolServer(tls=context) as upstream:
        url = upstream.url.replace("127.0.0.1", "localhost")
        assert url.startswith("https://")
        targets = {"tickets": {"base_url": url, "ca_file": str(tmp_path / "ca.pem")}}
        good = start_sidecar(url, targets=targets)
        with good.client() as client:
            assert client.call_tool("tickets.get", {"id": "5"}).json()["id"] == "5"
        (tmp_path / "other.pem").write_bytes(DevAuthority("other.example").x509_bundle_pem)
        targets = {"tickets": {"base_url": url, "ca_file": str(tmp_path / "other.pem")}}
        (tmp_path / "b").mkdir()
        bad = start_sidecar(
            url,
            targets=targets,
            server={"listen": [f"unix://{tmp_path}/b/agent.sock"]},
            audit={"path": str(tmp_path / "b" / "audit.log")},
            # Its own approvals socket: a live sidecar's is never taken over (item 13).
            approvals={"listen": f"unix://{tmp_path}/b/approvals.sock"},
        )
        with bad.client() as client, pytest.raises(Unavailable) as failed:
            client.call_tool("tickets.get", {"id": "5"})
    assert failed.value.code == "upstream_unavailable"
    assert "TLS" in str(failed.value)


def test_an_unwritable_audit_log_withholds_the_answer(start_sidecar, tools):
    running = start_sidecar(tools.url, audit={"path": "/dev/full"})
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "audit_unavailable"


@pytest.mark.parametrize(
    "amount",
    ["100.00000000000001", "5e-324", "9223372036854775808"],
    ids=["17_digits", "subnormal", "beyond_64_bits"],
)
def test_a_number_the_engine_cannot_compare_exactly_is_refused_and_audited(
    sidecar, tools, task, amount
):
    """On OPA, 100.00000000000001 > 100 (step up); rego-cpp compares at ~15 digits and would
    have allowed the refund. The sidecar refuses the input before policy instead."""
    payload = sidecar_pb2.CallToolRequest(
        tool="payments.refund", arguments_json=f'{{"amount": {amount}}}', task_id=task
    )
    error = _raw_call(sidecar.address, payload.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input.action.arguments.amount" in error.details()
    assert amount not in error.details()
    assert tools.received == []
    record = audit_lines(sidecar.audit_path)[0]
    assert record["outcome"]["code"] == "input_unrepresentable"
    assert record["decision"]["effect"] == "deny"


def test_a_compressed_answer_is_capped_by_its_decoded_size(start_sidecar):
    """A gzip bomb (10 MB of zeros in ~10 KB) is refused at relay.max_response_bytes of what
    it decodes to, not of what was sent, and never handed to the agent."""
    import gzip

    bomb = gzip.compress(b"0" * 10_000_000)
    assert len(bomb) < 20_000
    reply = Reply(body=bomb, content_type="text/plain", headers={"Content-Encoding": "gzip"})
    with ToolServer({("GET", "/tickets/"): lambda r: reply}) as upstream:
        running = start_sidecar(upstream.url, relay={"max_response_bytes": 100_000})
        with running.client() as client, pytest.raises(UpstreamError) as failed:
            client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "upstream_response_too_large"
