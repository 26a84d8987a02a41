"""Issue 34 deliverable 1: the A2A wire format as the sidecar reads it (sidecar/a2a/protocol.py)
and the redaction of A2A payloads (sidecar/a2a/redact.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher  # imports the 0.3 adapter

from sidecar.a2a import protocol
from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.redact import redact_message, redact_parts
from sidecar.config import ConfigError, parse_settings

EMAIL = "erin@example.com"


def _body(method: str, params: object, **extra: object) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params} | extra
    ).encode()


def test_a2a_outbound_every_sdk_method_of_both_versions_has_one_operation():
    """The table covers exactly the methods the official SDK's servers dispatch."""
    from a2a.compat.v0_3.jsonrpc_adapter import JSONRPC03Adapter

    ones = {m for m, (_, v) in protocol.METHODS.items() if v == "1.0"}
    olds = {m for m, (_, v) in protocol.METHODS.items() if v == "0.3"}
    assert ones == set(JsonRpcDispatcher.METHOD_TO_MODEL)
    assert olds == set(JSONRPC03Adapter.METHOD_TO_MODEL)
    by_version = {
        v: {op for _, (op, ver) in protocol.METHODS.items() if ver == v} for v in ("1.0", "0.3")
    }
    assert by_version["0.3"] <= by_version["1.0"]  # 0.3 has no ListTasks; the rest map alike


@pytest.mark.parametrize(
    ("method", "params", "task_id"),
    [
        ("GetTask", {"id": "t1"}, "t1"),
        ("tasks/get", {"id": "t1"}, "t1"),
        ("CancelTask", {"id": "t1"}, "t1"),
        ("SubscribeToTask", {"id": "t1"}, "t1"),
        ("tasks/resubscribe", {"id": "t1"}, "t1"),
        ("CreateTaskPushNotificationConfig", {"taskId": "t1", "url": "https://x"}, "t1"),
        ("tasks/pushNotificationConfig/set", {"taskId": "t1", "pushNotificationConfig": {}}, "t1"),
        ("GetTaskPushNotificationConfig", {"taskId": "t1", "id": "c"}, "t1"),
        ("tasks/pushNotificationConfig/get", {"id": "t1"}, "t1"),
        ("ListTaskPushNotificationConfigs", {"taskId": "t1"}, "t1"),
        (
            "tasks/pushNotificationConfig/delete",
            {"id": "t1", "pushNotificationConfigId": "c"},
            "t1",
        ),
        ("ListTasks", {"contextId": "c1"}, ""),
        ("GetExtendedAgentCard", {}, ""),
    ],
)
def test_a2a_outbound_task_ids_are_read_where_each_version_puts_them(method, params, task_id):
    request = protocol.parse_request(_body(method, params))
    assert request.task_id == task_id
    assert request.read_only == (request.operation in protocol.READ_OPERATIONS)


def test_a2a_outbound_a_message_is_read_with_its_skill_parts_and_ids():
    message = {
        "messageId": "m",
        "taskId": "t",
        "contextId": "c",
        "parts": [
            {"text": "hi"},
            {"data": {"to": EMAIL}},
            {"url": "https://f", "filename": "f.txt"},
        ],
        "metadata": {"skillId": "refund"},
    }
    request = protocol.parse_request(_body("SendStreamingMessage", {"message": message}))
    assert (request.operation, request.version, request.streaming) == ("stream", "1.0", True)
    assert (request.skill, request.task_id, request.context_id) == ("refund", "t", "c")
    assert [protocol.part_kind(p) for p in request.parts] == ["text", "data", "file"]
    assert EMAIL in protocol.part_texts(request.parts)
    old = {"kind": "file", "file": {"name": "n.pdf", "uri": "https://u"}}
    assert protocol.part_kind(old) == "file"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_request"),
        (b"\xff", "parse_error"),
        (b'{"jsonrpc": "2.0", "id": 1.5, "method": "GetTask"}', "invalid_request"),
        (b'{"jsonrpc": "2.0", "id": true, "method": "GetTask"}', "invalid_request"),
        (_body("SendMessage", {"message": {"parts": []}}), "invalid_params"),
        (_body("SendMessage", {"message": {"parts": [{"kind": "video"}]}}), "invalid_params"),
        (_body("SendMessage", {"message": {"parts": [{"text": 5}]}}), "invalid_params"),
        (_body("SendMessage", {"message": {"parts": [{}]}}), "invalid_params"),
        (
            _body("SendMessage", {"message": {"parts": [{"text": "a"}], "taskId": 3}}),
            "invalid_params",
        ),
        (
            _body("SendMessage", {"message": {"parts": [{"text": "a"}]}, "configuration": 1}),
            "invalid_params",
        ),
        (_body("SendMessage", {"message": {"parts": [{"text": "a"}] * 300}}), "message_too_large"),
        (_body("GetTask", {"id": ""}), "invalid_params"),
        (_body("GetTask", {"id": "x" * 300}), "invalid_params"),
        (_body("GetTask", {}), "invalid_params"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": NaN}}', "parse_error"),
    ],
)
def test_a2a_outbound_hostile_requests_are_refused_with_stable_codes(raw, code):
    with pytest.raises(A2aProtocolError) as caught:
        protocol.parse_request(raw)
    assert caught.value.code == code


def test_a2a_outbound_a_body_over_the_limit_is_refused_before_it_is_parsed():
    with pytest.raises(A2aProtocolError) as caught:
        protocol.parse_request(b"{" * 100, max_bytes=10)
    assert (caught.value.code, caught.value.rpc_code) == (
        "message_too_large",
        protocol.RESOURCE_EXHAUSTED,
    )


def test_a2a_outbound_redaction_reaches_every_text_field_and_keeps_the_ids():
    answer = {
        "jsonrpc": "2.0",
        "id": EMAIL,  # the agent's own id comes back as it was
        "result": {
            "task": {
                "id": "t",
                "contextId": "c",
                "status": {"state": "TASK_STATE_WORKING", "message": {"parts": [{"text": EMAIL}]}},
                "history": [
                    {"messageId": "m", "role": "ROLE_AGENT", "parts": [{"data": {EMAIL: EMAIL}}]}
                ],
                "artifacts": [
                    {"artifactId": "a", "name": EMAIL, "description": EMAIL, "parts": []}
                ],
                "metadata": {"note": EMAIL},
            }
        },
    }
    redacted = redact_message(answer, ["email"])
    text = json.dumps(redacted["result"])
    assert EMAIL not in text
    assert text.count("[REDACTED:email]") == 6
    assert redacted["id"] == EMAIL and redacted["result"]["task"]["id"] == "t"
    error = redact_message(
        {"error": {"code": -32001, "message": EMAIL, "data": [EMAIL]}}, ["email"]
    )
    assert EMAIL not in json.dumps(error) and error["error"]["code"] == -32001
    params = {"message": {"messageId": "m", "parts": [{"kind": "text", "text": EMAIL}]}, "x": EMAIL}
    sent = redact_parts(params, ["email"])
    # every member but the protocol's identifiers is redacted (review finding 1)
    assert sent["message"]["parts"][0]["text"] == "[REDACTED:email]"
    assert sent["x"] == "[REDACTED:email]"
    assert redact_parts(params, []) is params


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"a2a": {"listen": "0.0.0.0:8095"}}, "a2a.listen"),
        ({"a2a": {"listen": "unix:///tmp/a.sock"}}, "a2a.listen"),
        ({"a2a": {"listen": "8095"}}, "a2a.listen"),
        ({"a2a_peers": {"Billing": {"url": "http://x"}}}, "a2a_peers.Billing"),
        ({"a2a_peers": {"b": {"url": "ftp://x"}}}, "a2a_peers.b.url"),
        (
            {"a2a_peers": {"b": {"url": "http://x", "credential": {"kind": "jwt_svid"}}}},
            "a2a_peers.b.credential.audience",
        ),
        (
            {"a2a_peers": {"b": {"url": "http://x", "credential": {"kind": "mtls"}}}},
            "a2a_peers.b.credential",
        ),
        ({"a2a_peers": {"b": {"url": "http://x", "timeout_s": 0}}}, "a2a_peers.b.timeout_s"),
        (
            {"a2a_peers": {"b": {"url": "http://x", "max_message_bytes": "big"}}},
            "a2a_peers.b.max_message_bytes",
        ),
        (
            {"a2a_peers": {"b": {"url": "http://x", "skills": {"s": {"operation": "write"}}}}},
            "a2a_peers.b.skills.s.operation",
        ),
        (
            {"a2a_peers": {"b": {"url": "http://x", "spiffe_id": "billing"}}},
            "a2a_peers.b.spiffe_id",
        ),
    ],
)
def test_a2a_outbound_bad_configuration_names_the_key(raw, key, tmp_path):
    base = {"identity": {"mode": "jwt", "audience": "spiffe://demo.example/s"}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(base | raw, source=Path(tmp_path / "config.yaml"))
    assert f": {key}" in str(caught.value)


def test_a2a_outbound_the_endpoint_is_refused_where_it_cannot_attest(tmp_path):
    for identity in ({"mode": "pod"}, {"mode": "mtls"}):
        with pytest.raises(ConfigError, match=r"a2a\.listen"):
            parse_settings(
                {"identity": identity, "a2a": {"listen": "127.0.0.1:8095"}},
                source=Path(tmp_path / "config.yaml"),
            )


@pytest.mark.parametrize("method", ["SendMessage", "message/send", "SendStreamingMessage"])
def test_review_s11_two_push_configs_in_one_request_are_refused(method):
    """A 1.0 server reads ``taskPushNotificationConfig``, a 0.3 one ``pushNotificationConfig``:
    a request naming both would let policy decide on one URL while the server stores the other
    (an unlisted host, e.g. 169.254.169.254, past the push rule). Refused; each alone is read."""
    message = {"role": "ROLE_USER", "messageId": "m-1", "parts": [{"text": "hi"}]}
    both = {
        "taskPushNotificationConfig": {"url": "http://169.254.169.254/latest/meta-data/"},
        "pushNotificationConfig": {"url": "https://hooks.demo.example/a2a"},
    }
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(_body(method, {"message": message, "configuration": both}))
    assert refused.value.code == "invalid_params" and "twice" in str(refused.value)
    for key, config in both.items():
        parsed = protocol.parse_request(
            _body(method, {"message": message, "configuration": {key: config}})
        )
        assert parsed.push_url == config["url"]
