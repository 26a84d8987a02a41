"""Issue 34: the HTTP+JSON binding's translation (sidecar/a2a/rest_binding.py) and its setting.
The end-to-end proof against a real a2a-sdk REST server is
tests/integration/test_a2a_rest_binding.py; these are the shapes no real server sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.a2a.rest_binding import binding_of, rest_refusal, to_rest
from sidecar.calls.a2a import PeerFailure
from sidecar.config import ConfigError, parse_settings

BASE = {"identity": {"mode": "jwt", "audience": "spiffe://demo.example/s"}}


def _card(*bindings: str) -> dict:
    return {"supportedInterfaces": [{"url": "http://p", "protocolBinding": b} for b in bindings]}


@pytest.mark.parametrize(
    ("configured", "card", "expected"),
    [
        ("auto", _card("HTTP+JSON"), "http_json"),
        ("auto", _card("http+json"), "http_json"),
        ("auto", _card("HTTP+JSON", "JSONRPC"), "jsonrpc"),  # JSON-RPC preferred
        ("auto", {"url": "http://p"}, "jsonrpc"),  # 0.3 without preferredTransport
        (
            "auto",
            {
                "url": "http://p",
                "preferredTransport": "GRPC",
                "additionalInterfaces": [{"url": "http://p", "transport": "JSONRPC"}],
            },
            "jsonrpc",
        ),
        ("auto", {"url": "http://p", "preferredTransport": "HTTP+JSON"}, "http_json"),
        (
            "auto",
            {
                "url": "http://p",
                "preferredTransport": "HTTP+JSON",
                "additionalInterfaces": [{"url": "http://p", "transport": "JSONRPC"}],
            },
            "jsonrpc",
        ),
        ("http_json", _card("JSONRPC"), "http_json"),  # the operator's word wins
        ("jsonrpc", _card("HTTP+JSON"), "jsonrpc"),
        ("jsonrpc", _card("GRPC"), "jsonrpc"),
    ],
)
def test_item34_rest_the_binding_comes_from_the_setting_or_the_pinned_card(
    configured, card, expected
):
    assert binding_of(configured, card) == expected


@pytest.mark.parametrize("value", ["grpc", "HTTP+JSON", "", 1, None])
def test_item34_rest_a_bad_binding_setting_names_the_key(value, tmp_path):
    raw = BASE | {"a2a_peers": {"b": {"url": "http://x", "binding": value}}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, source=Path(tmp_path / "config.yaml"))
    assert "a2a_peers.b.binding" in str(caught.value)


def test_item34_rest_the_binding_setting_defaults_to_auto(tmp_path):
    raw = BASE | {
        "a2a_peers": {"b": {"url": "http://x"}, "c": {"url": "http://y", "binding": "http_json"}}
    }
    settings = parse_settings(raw, source=Path(tmp_path / "config.yaml"))
    assert settings.a2a_peers["b"].binding == "auto"
    assert settings.a2a_peers["c"].binding == "http_json"


def _rest(method: str, operation: str, params: dict, version: str = "1.0"):
    return to_rest(
        {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}, operation, version
    )


def test_item34_rest_every_operation_has_the_sdks_route_and_verb():
    cases = [
        ("SendMessage", "send", {"message": {}}, "POST", "/message:send"),
        ("SendStreamingMessage", "stream", {"message": {}}, "POST", "/message:stream"),
        ("GetTask", "get_task", {"id": "t1", "historyLength": 2},
         "GET", "/tasks/t1?historyLength=2"),
        ("ListTasks", "list_tasks", {"contextId": "c", "pageSize": 5, "includeArtifacts": True},
         "GET", "/tasks?contextId=c&pageSize=5&includeArtifacts=true"),
        ("CancelTask", "cancel_task", {"id": "t1"}, "POST", "/tasks/t1:cancel"),
        ("SubscribeToTask", "subscribe", {"id": "t1"}, "POST", "/tasks/t1:subscribe"),
        ("CreateTaskPushNotificationConfig", "push_config_set", {"taskId": "t1", "url": "https://h"},
         "POST", "/tasks/t1/pushNotificationConfigs"),
        ("GetTaskPushNotificationConfig", "push_config_get", {"taskId": "t1", "id": "c1"},
         "GET", "/tasks/t1/pushNotificationConfigs/c1"),
        ("ListTaskPushNotificationConfigs", "push_config_list", {"taskId": "t1", "pageSize": 1},
         "GET", "/tasks/t1/pushNotificationConfigs?pageSize=1"),
        ("DeleteTaskPushNotificationConfig", "push_config_delete", {"taskId": "t1", "id": "c1"},
         "DELETE", "/tasks/t1/pushNotificationConfigs/c1"),
        ("GetExtendedAgentCard", "extended_card", {}, "GET", "/extendedAgentCard"),
        ("GetTask", "get_task", {"id": "t1", "tenant": "acme"}, "GET", "/acme/tasks/t1"),
    ]  # fmt: skip
    for method, operation, params, verb, path in cases:
        request = _rest(method, operation, params)
        assert (request.verb, request.url("http://peer:1/base/")) == (
            verb,
            "http://peer:1/base" + path,
        ), method
    assert _rest("SendMessage", "send", {"message": {"x": 1}}).body == {"message": {"x": 1}}
    assert _rest("SubscribeToTask", "subscribe", {"id": "t1"}).data() is None


@pytest.mark.parametrize(
    "params",
    [
        {"id": "t1", "historyLength": {"$gt": 1}},  # an object is no query parameter
        {"id": "t1", "x-y": 1},
        {"id": 5},
        {"id": ""},
        {"id": "../tasks"},
        {"id": "t1", "tenant": "a/b"},
        {"id": "t1", "tenant": ""},
    ],
)
def test_item34_rest_what_cannot_be_a_path_or_query_is_refused_before_connecting(params):
    with pytest.raises(PeerFailure) as caught:
        _rest("GetTask", "get_task", params)
    assert caught.value.code == "malformed_request" and not caught.value.reached


def test_item34_rest_a_0_3_method_is_binding_unsupported():
    with pytest.raises(PeerFailure) as caught:
        _rest("tasks/get", "get_task", {"id": "t1"}, version="0.3")
    assert caught.value.code == "binding_unsupported" and not caught.value.reached


STATUS_404 = (
    b'{"error": {"code": 404, "status": "NOT_FOUND", "message": "Task not found", "details": '
    b'[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TASK_NOT_FOUND", '
    b'"domain": "a2a-protocol.org", "metadata": {"taskId": "t1"}}]}}'
)


def test_item34_rest_a_status_error_maps_to_the_sdks_json_rpc_code():
    request = _rest("GetTask", "get_task", {"id": "t1"})
    assert request.error(404, STATUS_404) == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": -32001, "message": "Task not found", "data": {"taskId": "t1"}},
    }
    unknown = request.error(409, b'{"error": {"message": "busy", "details": "x"}}')["error"]
    assert unknown == {"code": -32603, "message": "busy", "data": {"upstream_status": 409}}
    route = request.error(
        404,
        b'{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", '
        b'"reason": "NOPE"}]}}',
    )
    assert route["error"]["code"] == -32601
    assert route["error"]["data"] == {"upstream_status": 404, "reason": "NOPE"}


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"error": "x"}', b'{"message": "x"}', b'{"a": 1, "a": 2}', b"NaN"]
)
def test_item34_rest_an_error_body_of_another_shape_is_peer_bad_response(raw):
    with pytest.raises(PeerFailure) as caught:
        _rest("GetTask", "get_task", {"id": "t1"}).error(500, raw)
    assert caught.value.code == "peer_bad_response" and caught.value.reached


def test_item34_rest_answers_and_events_come_back_as_json_rpc():
    get = _rest("GetTask", "get_task", {"id": "t1"})
    assert get.answer(b'{"id": "t1"}') == {"jsonrpc": "2.0", "id": 9, "result": {"id": "t1"}}
    delete = _rest(
        "DeleteTaskPushNotificationConfig", "push_config_delete", {"taskId": "t", "id": "c"}
    )
    assert delete.answer(b"{}")["result"] is None  # as the SDK's JSON-RPC server answers
    for raw in (b"[1]", b'"x"', b"{bad"):
        with pytest.raises(PeerFailure):
            get.answer(raw)
    stream = _rest("SendStreamingMessage", "stream", {"message": {}})
    assert stream.event(b'data: {"task": {"id": "t1"}}') == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {"task": {"id": "t1"}},
    }
    assert stream.event(b": ping") is None
    error = stream.event(b"event: error\ndata: " + STATUS_404)
    assert error is not None and error["error"]["code"] == -32001
    with pytest.raises(PeerFailure):
        stream.event(b'event: error\ndata: {"task": {}}')
    with pytest.raises(PeerFailure):
        stream.event(b"data: [1, 2]")


@pytest.mark.parametrize(
    ("method", "path", "refused"),
    [
        ("POST", "/message:send", True),
        ("GET", "/tasks/t1", True),
        ("GET", "/acme/tasks", True),
        ("POST", "/v1/message:stream", True),
        ("GET", "/v1/card", True),
        ("DELETE", "/tasks/t1/pushNotificationConfigs/c", True),
        ("GET", "/favicon.ico", False),
        ("PUT", "/tasks/t1", False),
        ("POST", "/a/b/message:send", False),
    ],
)
def test_item34_rest_the_inbound_listener_knows_a_rest_request(method, path, refused):
    assert (rest_refusal(method, path) is not None) is refused
