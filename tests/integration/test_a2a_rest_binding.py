"""Issue 34: A2A's HTTP+JSON (REST) binding to peers (docs/a2a.md "Bindings").

The agent is the unmodified a2a-sdk client (JSON-RPC, from the card the sidecar hands it);
``ledger`` is a real a2a-sdk 1.3.0 server serving ONLY the REST routes
(tests/support/a2a_rest_peer.py, its card one HTTP+JSON interface); ``billing`` is the
JSON-RPC peer of the outbound tests, to compare against. The translation happens at the wire
only: policy input, redaction and audit are those of a JSON-RPC peer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    SendMessageConfiguration,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError

from tests.integration.test_a2a_outbound import (
    AGENT,
    AGENT_EMAIL,
    PEER_AUDIENCE,
    POLICY,
    Outbound,
    _request,
    _send,
)
from tests.support.a2a_peer import PEER_SECRET_EMAIL, PeerAgent
from tests.support.a2a_rest_peer import RestPeer
from tests.support.policies import write_policy

PEER_SETTINGS = {
    "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
    "timeout_s": 3,
    "max_message_bytes": 16384,
    "max_response_bytes": 65536,
    "skills": {"refund": {"operation": "act"}, "lookup": {"operation": "read"}},
}


@pytest.fixture
def rest_peer() -> Iterator[RestPeer]:
    peer = RestPeer()
    yield peer
    peer.stop()


@pytest.fixture
def rpc_peer() -> Iterator[PeerAgent]:
    peer = PeerAgent()
    yield peer
    peer.stop()


@pytest.fixture
def outbound(start_jwt_sidecar, authority, rest_peer, rpc_peer, tmp_path) -> Outbound:
    from tests.conftest import SIDECAR_AUDIENCE

    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "ledger": {"url": rest_peer.url, **PEER_SETTINGS},
            "billing": {"url": rpc_peer.url, **PEER_SETTINGS},
        },
    )
    out = Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    out.url = f"{out.base}/peers/ledger"
    return out


def _run(outbound: Outbound, work: Any, *, streaming: bool = False) -> Any:
    """``work(client)`` with the official client built from the sidecar's card for ledger."""

    async def go() -> Any:
        async with httpx.AsyncClient(headers=outbound.headers(), timeout=30) as http:
            config = ClientConfig(streaming=streaming, httpx_client=http)
            client = await create_client(outbound.url, client_config=config)
            return await work(client)

    return asyncio.run(go())


async def _all(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


def _task_id(outbound: Outbound) -> str:
    send = _send("task")
    send["params"]["configuration"] = {"returnImmediately": True}
    return outbound.post(send).json()["result"]["task"]["id"]


# --- the card and the wire ------------------------------------------------------------------


def test_item34_rest_the_agent_keeps_a_jsonrpc_only_card_at_the_sidecar(outbound, rest_peer):
    card = httpx.get(outbound.url + "/.well-known/agent-card.json", headers=outbound.headers())
    interfaces = card.json()["supportedInterfaces"]
    assert interfaces == [
        {"url": outbound.url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ]
    assert rest_peer.url not in card.text


def test_item34_rest_sdk_send_goes_to_message_send_redacted_both_ways(outbound, rest_peer):
    events = _run(
        outbound,
        lambda c: _all(c.send_message(_request(f"echo {AGENT_EMAIL}", "lookup"))),
    )
    text = events[-1].message.parts[0].text
    assert text == "peer heard: echo [REDACTED:email]"
    [seen] = rest_peer.seen
    assert (seen.verb, seen.raw_path) == ("POST", "/message:send")
    assert seen.headers["a2a-version"] == "1.0"
    assert seen.body["message"]["parts"][0]["text"] == "echo [REDACTED:email]"
    assert AGENT_EMAIL not in seen.raw.decode() and outbound.token not in json.dumps(seen.headers)
    leak = outbound.post(_send("leak"))
    assert leak.json()["result"]["message"]["parts"][0]["text"] == "write to [REDACTED:email]"
    assert PEER_SECRET_EMAIL not in leak.text
    records = outbound.records()
    assert [r["outcome"]["code"] for r in records] == ["ok", "ok"]
    assert PEER_SECRET_EMAIL not in json.dumps(records) and AGENT_EMAIL not in json.dumps(records)


def test_item34_rest_policy_input_is_the_same_for_a_jsonrpc_and_a_rest_peer(
    outbound, rest_peer, rpc_peer
):
    body = _send(f"echo {AGENT_EMAIL}", skill="lookup")
    rest = outbound.post(body).json()
    rpc = outbound.post(body, url=f"{outbound.base}/peers/billing").json()
    assert rest["result"]["message"]["parts"] == rpc["result"]["message"]["parts"]
    # What each peer received: the same params, redacted alike.
    assert rest_peer.seen[0].body == rpc_peer.seen[0].body["params"]
    first, second = outbound.records()

    def policy_input(record: dict[str, Any]) -> dict[str, Any]:
        found = json.loads(json.dumps(record["input"]))
        action = found["action"]
        assert action.pop("target") in ("ledger", "billing")
        assert action.pop("name") in ("ledger.lookup", "billing.lookup")
        action["card"].pop("digest")
        action["card"].pop("pinned_digest")
        found.pop("time_ns")  # per call, whatever the peer
        found.pop("request_id")
        return found

    assert policy_input(first) == policy_input(second)
    assert first["action"]["arguments"] == second["action"]["arguments"]


def test_item34_rest_sdk_stream_is_message_stream_redacted_across_chunks(outbound, rest_peer):
    events = _run(outbound, lambda c: _all(c.send_message(_request("split"))), streaming=True)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and kinds[-1] == "status_update"
    texts = [
        e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")
    ]
    assert "".join(texts) == "mail [REDACTED:email], ok"
    assert all(PEER_SECRET_EMAIL[:6] not in t or "REDACTED" in t for t in texts)
    [seen] = rest_peer.seen
    assert (seen.verb, seen.raw_path) == ("POST", "/message:stream")
    [record] = outbound.records()
    assert (
        record["outcome"]["code"] == "ok" and record["input"]["action"]["a2a_operation"] == "stream"
    )
    assert PEER_SECRET_EMAIL not in json.dumps(record)


def test_item34_rest_sdk_get_and_cancel_use_their_routes(outbound, rest_peer):
    task_id = _task_id(outbound)

    async def work(client: Any) -> tuple[Any, Any]:
        got = await client.get_task(GetTaskRequest(id=task_id, history_length=1))
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        return got, cancelled

    got, cancelled = _run(outbound, work)
    assert got.id == task_id and cancelled.status.state == TaskState.TASK_STATE_CANCELED
    routes = [(s.verb, s.raw_path, s.query) for s in rest_peer.seen]
    assert routes[1:] == [
        ("GET", f"/tasks/{task_id}", "historyLength=1"),
        ("POST", f"/tasks/{task_id}:cancel", ""),
    ]
    records = outbound.records()
    assert [r["input"]["action"]["a2a_operation"] for r in records] == [
        "send",
        "get_task",
        "cancel_task",
    ]
    assert all(r["outcome"]["code"] == "ok" for r in records)


def test_item34_rest_sdk_push_config_create_get_list_delete(outbound, rest_peer):
    task_id = _task_id(outbound)
    config = TaskPushNotificationConfig(task_id=task_id, id="cfg-1", url="https://hooks.example/a")

    async def work(client: Any) -> tuple[Any, ...]:
        created = await client.create_task_push_notification_config(config)
        got = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task_id, id="cfg-1")
        )
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id)
        )
        await client.delete_task_push_notification_config(
            DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="cfg-1")
        )
        after = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id)
        )
        return created, got, listed, after

    created, got, listed, after = _run(outbound, work)
    assert created.url == got.url == "https://hooks.example/a"
    assert [c.id for c in listed.configs] == ["cfg-1"] and list(after.configs) == []
    configs = f"/tasks/{task_id}/pushNotificationConfigs"
    assert [(s.verb, s.raw_path) for s in rest_peer.seen[1:]] == [
        ("POST", configs),
        ("GET", configs + "/cfg-1"),
        ("GET", configs),
        ("DELETE", configs + "/cfg-1"),
        ("GET", configs),
    ]
    records = outbound.records()[1:]
    assert [r["input"]["action"]["a2a_operation"] for r in records] == [
        "push_config_set",
        "push_config_get",
        "push_config_list",
        "push_config_delete",
        "push_config_list",
    ]
    assert records[0]["input"]["action"]["arguments"]["push_url"] == {
        "scheme": "https",
        "host": "hooks.example",
        "port": 443,  # the effective port (review s12, h2)
    }
    assert all(r["outcome"]["code"] == "ok" for r in records)


# --- errors and bounds ----------------------------------------------------------------------


def test_item34_rest_a_peer_error_maps_to_the_json_rpc_error_the_sdk_expects(outbound, rest_peer):
    # Tasks of this agent's the peer has forgotten (another agent's: refused first, s11 item 2).
    outbound.running.sidecar.a2a_outbound.peers["ledger"].tasks.record(
        AGENT, {"task:no-such-task", "task:nope"}
    )

    async def work(client: Any) -> Any:
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id="no-such-task"))

    _run(outbound, work)
    raw = outbound.post({"jsonrpc": "2.0", "id": 5, "method": "GetTask", "params": {"id": "nope"}})
    error = raw.json()["error"]
    assert raw.json()["id"] == 5 and error["code"] == -32001 and error["message"]
    assert [(s.verb, s.raw_path) for s in rest_peer.seen] == [
        ("GET", "/tasks/no-such-task"),
        ("GET", "/tasks/nope"),
    ]
    records = outbound.records()
    assert [r["outcome"]["code"] for r in records] == ["upstream_error"] * 2
    assert records[-1]["upstream"]["error"] == {"code": -32001}


HOSTILE_IDS = [
    "../message:send",
    "a/b",
    "x:subscribe",
    "x?y=1",
    "x#frag",
    "..",
    ".",
    "%2e%2e",
    "%2F",
    "a b",
    "tâche",
    "x" * 257,
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_item34_rest_a_hostile_task_id_reaches_no_route_of_the_peer(outbound, rest_peer, hostile):
    bodies = [
        {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": hostile}},
        {"jsonrpc": "2.0", "id": 2, "method": "CancelTask", "params": {"id": hostile}},
        {"jsonrpc": "2.0", "id": 3, "method": "SubscribeToTask", "params": {"id": hostile}},
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "GetTaskPushNotificationConfig",
            "params": {"taskId": "t-1", "id": hostile},
        },
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "ListTaskPushNotificationConfigs",
            "params": {"taskId": hostile},
        },
        {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "GetTask",
            "params": {"id": "t-1", "tenant": hostile},
        },
    ]
    for body in bodies:
        answer = outbound.post(body).json()
        if "error" in answer and answer["error"]["data"].get("code") == "invalid_params":
            continue  # refused by the parser already (over 256 characters)
        assert answer["error"]["code"] == -32602, body
        assert answer["error"]["data"]["code"] == "malformed_request", body
    assert rest_peer.seen == []
    records = outbound.records()
    assert len(records) == len(bodies)
    assert all(r["outcome"]["code"] == "malformed_request" for r in records)
    assert not any(r["outcome"]["relayed"] for r in records)


def test_item34_rest_a_peer_that_hangs_drips_or_floods_keeps_todays_codes(outbound, rest_peer):
    hang = outbound.post(_send("hang")).json()
    assert hang["error"]["code"] == -32014 and hang["error"]["data"]["code"] == "peer_timeout"
    body = _send("drip")
    body["method"] = "SendStreamingMessage"
    with httpx.stream(
        "POST", outbound.url, json=body, headers=outbound.headers(), timeout=30
    ) as response:
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert len(events) >= 2 and "result" in events[0] and events[0]["id"] == 7
    assert events[-1]["error"]["data"]["code"] == "peer_timeout"
    big = outbound.post(_send("big")).json()
    assert big["error"]["code"] == -32015
    assert big["error"]["data"]["code"] == "peer_response_too_large"
    codes = [r["outcome"]["code"] for r in outbound.records()]
    assert codes == ["peer_timeout", "peer_timeout", "peer_response_too_large"]


def test_item34_rest_a_0_3_method_to_a_rest_peer_is_binding_unsupported(outbound, rest_peer):
    message = {
        "kind": "message",
        "role": "user",
        "messageId": "m03",
        "parts": [{"kind": "text", "text": "echo hi"}],
    }
    body = {"jsonrpc": "2.0", "id": "a", "method": "message/send", "params": {"message": message}}
    error = outbound.post(body).json()["error"]
    assert error["code"] == -32601 and error["data"]["code"] == "binding_unsupported"
    assert rest_peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "binding_unsupported" and not record["outcome"]["relayed"]


def test_item34_rest_a_streamed_send_passes_its_configuration_in_the_body(outbound, rest_peer):
    request = _request("echo hi", "lookup")
    request.configuration.CopyFrom(SendMessageConfiguration(history_length=2))
    events = _run(outbound, lambda c: _all(c.send_message(request)), streaming=True)
    assert events[-1].message.parts[0].text == "peer heard: echo hi"
    [seen] = rest_peer.seen
    assert (seen.verb, seen.raw_path) == ("POST", "/message:stream")
    assert seen.body["configuration"]["historyLength"] == 2


def test_item34_rest_subscribe_list_and_the_extended_card_use_their_routes(outbound, rest_peer):
    task_id = _task_id(outbound)
    body = {"jsonrpc": "2.0", "id": 3, "method": "SubscribeToTask", "params": {"id": task_id}}
    with httpx.stream(
        "POST", outbound.url, json=body, headers=outbound.headers(), timeout=30
    ) as response:
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert events[0]["id"] == 3 and events[0]["result"]["task"]["id"] == task_id
    assert events[-1]["error"]["data"]["code"] == "peer_timeout"  # the task never ends
    listed = outbound.post({"jsonrpc": "2.0", "id": 4, "method": "ListTasks", "params": {}})
    assert task_id in [t["id"] for t in listed.json()["result"]["tasks"]]
    card = outbound.post(
        {"jsonrpc": "2.0", "id": 5, "method": "GetExtendedAgentCard", "params": {}}
    ).json()["result"]
    # Checked and rewritten like a JSON-RPC peer's: its only interface is the sidecar's.
    assert [i["url"] for i in card["supportedInterfaces"]] == [outbound.url]
    assert rest_peer.url not in json.dumps(card)
    assert [(s.verb, s.raw_path) for s in rest_peer.seen[1:]] == [
        ("POST", f"/tasks/{task_id}:subscribe"),
        ("GET", "/tasks"),
        ("GET", "/extendedAgentCard"),
    ]
    operations = [r["input"]["action"]["a2a_operation"] for r in outbound.records()]
    assert operations == ["send", "subscribe", "list_tasks", "extended_card"]
