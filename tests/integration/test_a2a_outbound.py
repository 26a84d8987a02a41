"""Issue 34 deliverable 1: outbound A2A. The agent is the unmodified official a2a-sdk client
pointed at the sidecar's card URL; the peer is a real a2a-sdk server (tests/support/a2a_peer.py).
Each request is one guarded call with exactly one audit record, however it ends.

The sidecar runs in identity mode jwt (the agent presents its JWT-SVID; the peer gets the
sidecar's own JWT-SVID for the peer's audience, never the agent's header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest

from tests.conftest import audit_lines
from tests.support.a2a_peer import PEER_SECRET_EMAIL, PeerAgent
from tests.support.policies import write_policy

AGENT = "spiffe://demo.example/agent/support"
PEER_AUDIENCE = "spiffe://demo.example/agent/billing"
AGENT_EMAIL = "dave.agent@example.com"

# The test policy (until A4's baseline): reads and "lookup" allowed with e-mail redacted both
# ways and the input kept on record; "refund" stepped up; anything else (an unlisted skill)
# and a changed card denied.
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

allowed_skill(skill) if skill == ""

allowed_skill(skill) if {
    skill == "lookup"
    skill in input.action.card.skills
}

decision := {
    "effect": "allow",
    "obligations": {"redact": ["email"], "redact_response": ["email"], "log": "full"},
} if {
    input.action.kind == "a2a"
    not input.action.card.changed
    allowed_skill(input.action.skill)
}

decision := {"effect": "step_up", "reasons": ["refunds need a human"]} if {
    input.action.kind == "a2a"
    input.action.skill == "refund"
}
"""


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


class Outbound:
    """The sidecar's A2A endpoint for ``billing`` and what the agent presents to it."""

    def __init__(self, running: Any, token: str) -> None:
        self.running = running
        self.token = token
        self.base = running.sidecar.a2a_outbound.base_url
        self.url = f"{self.base}/peers/billing"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    def records(self) -> list[dict[str, Any]]:
        return audit_lines(Path(self.running.audit_path))

    def post(self, body: Any, *, url: str = "", **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            url or self.url,
            content=content,
            headers=self.headers(**{"Content-Type": "application/json", **headers}),
            timeout=30,
        )


@pytest.fixture
def outbound(start_jwt_sidecar, authority, peer, tmp_path) -> Outbound:
    from tests.conftest import SIDECAR_AUDIENCE

    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": {
                "url": peer.url,
                "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
                "timeout_s": 3,
                "max_message_bytes": 16384,
                "max_response_bytes": 65536,
                "skills": {"refund": {"operation": "act"}, "lookup": {"operation": "read"}},
            }
        },
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def _send(text: str, *, skill: str = "", msg_id: str = "m1") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "ROLE_USER", "messageId": msg_id, "parts": [{"text": text}]}
    if skill:
        message["metadata"] = {"skill": skill}
    return {"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": {"message": message}}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def _sdk_send(outbound: Outbound, request: SendMessageRequest, *, streaming: bool) -> list:
    """The official client, built from the sidecar's card URL, sending ``request``."""
    async with httpx.AsyncClient(headers=outbound.headers(), timeout=30) as http:
        config = ClientConfig(streaming=streaming, httpx_client=http)
        client = await create_client(outbound.url, client_config=config)
        return [event async for event in client.send_message(request)]


def _request(text: str, skill: str = "") -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id="m-sdk", parts=[Part(text=text)])
    if skill:
        message.metadata.update({"skill": skill})
    return SendMessageRequest(message=message)


# --- the card -----------------------------------------------------------------------------


def test_a2a_outbound_card_points_every_interface_at_the_sidecar(outbound, peer):
    async def resolve() -> Any:
        async with httpx.AsyncClient(headers=outbound.headers()) as http:
            return await A2ACardResolver(http, outbound.url).get_agent_card()

    card = asyncio.run(resolve())
    assert [i.url for i in card.supported_interfaces] == [outbound.url]
    assert {s.id for s in card.skills} == {"refund", "lookup"}
    assert peer.url not in json.dumps(
        httpx.get(outbound.url + "/.well-known/agent-card.json").json()
    )


def test_a2a_outbound_unknown_peer_is_404_with_its_code_and_one_record(outbound, peer):
    answer = outbound.post(_send("echo"), url=f"{outbound.base}/peers/nobody")
    assert answer.status_code == 404
    assert answer.json()["error"]["data"]["code"] == "unknown_peer"
    card = httpx.get(f"{outbound.base}/peers/nobody/.well-known/agent-card.json")
    assert card.status_code == 404 and card.json()["error"]["data"]["code"] == "unknown_peer"
    [record] = outbound.records()
    assert record["outcome"]["code"] == "unknown_peer"
    assert peer.seen == []


# --- allowed calls ------------------------------------------------------------------------


def test_a2a_outbound_sdk_send_is_one_guarded_call_with_the_peers_credential(outbound, peer):
    events = asyncio.run(_sdk_send(outbound, _request("echo hello", "lookup"), streaming=False))
    assert events[-1].message.parts[0].text == "peer heard: echo hello"
    [seen] = peer.seen
    # The peer sees the sidecar's JWT-SVID for its audience, never the agent's own header.
    auth = seen.headers["authorization"]
    assert auth != f"Bearer {outbound.token}" and outbound.token not in json.dumps(seen.headers)
    assert _claims(auth.removeprefix("Bearer "))["aud"] in (PEER_AUDIENCE, [PEER_AUDIENCE])
    assert seen.headers["a2a-version"] == "1.0"
    assert seen.body["method"] == "SendMessage"
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"
    action = record["input"]["action"]
    assert action["kind"] == "a2a" and action["name"] == "billing.lookup"
    assert action["operation"] == "read" and action["a2a_operation"] == "send"
    assert action["skill"] == "lookup" and action["method"] == "SendMessage"
    assert action["card"]["skills"] == ["refund", "lookup"]
    assert action["card"]["changed"] is False
    assert action["arguments"]["parts"] == {"count": 1, "kinds": ["text"], "chars": 10}
    assert record["subject"]["spiffe_id"] == AGENT


def test_a2a_outbound_outgoing_parts_are_redacted_before_they_leave(outbound, peer):
    answer = outbound.post(_send(f"echo mail {AGENT_EMAIL}"))
    text = answer.json()["result"]["message"]["parts"][0]["text"]
    assert AGENT_EMAIL not in json.dumps(peer.seen[0].body)
    assert "[REDACTED:email]" in peer.seen[0].body["params"]["message"]["parts"][0]["text"]
    assert AGENT_EMAIL not in text
    assert len(outbound.records()) == 1


def test_a2a_outbound_the_peers_answer_is_redacted(outbound, peer):
    answer = outbound.post(_send("leak"))
    body = answer.json()
    assert PEER_SECRET_EMAIL not in answer.text
    assert body["result"]["message"]["parts"][0]["text"] == "write to [REDACTED:email]"
    assert body["id"] == 7
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok" and PEER_SECRET_EMAIL not in json.dumps(record)


def test_a2a_outbound_sdk_stream_is_relayed_event_by_event_and_redacted(outbound, peer):
    events = asyncio.run(_sdk_send(outbound, _request("stream"), streaming=True))
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and kinds.count("artifact_update") == 3
    assert kinds[-1] == "status_update"
    texts = [
        e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")
    ]
    # Text is held back until no match can still grow into it (the artifact's redactor).
    assert "".join(texts) == "part one, mail [REDACTED:email], done"
    assert peer.seen[0].body["method"] == "SendStreamingMessage"
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"
    assert record["input"]["action"]["a2a_operation"] == "stream"
    assert record["upstream"]["events"] == 5
    assert PEER_SECRET_EMAIL not in json.dumps(record)


def test_a2a_outbound_get_and_cancel_task_are_governed_reads_and_acts(outbound, peer):
    send = _send("task")
    send["params"]["configuration"] = {"returnImmediately": True}
    task = outbound.post(send).json()["result"]["task"]
    got = outbound.post(
        {"jsonrpc": "2.0", "id": 8, "method": "GetTask", "params": {"id": task["id"]}}
    )
    assert got.json()["result"]["id"] == task["id"]
    cancelled = outbound.post(
        {"jsonrpc": "2.0", "id": 9, "method": "CancelTask", "params": {"id": task["id"]}}
    )
    assert cancelled.json()["result"]["status"]["state"] == "TASK_STATE_CANCELED"
    records = outbound.records()
    assert [r["input"]["action"]["a2a_operation"] for r in records] == [
        "send",
        "get_task",
        "cancel_task",
    ]
    assert [r["input"]["action"]["operation"] for r in records] == ["act", "read", "act"]
    assert all(r["outcome"]["code"] == "ok" for r in records)


def test_a2a_outbound_subscribe_is_a_streamed_read_bounded_like_any_stream(outbound, peer):
    send = _send("task")
    send["params"]["configuration"] = {"returnImmediately": True}
    task = outbound.post(send).json()["result"]["task"]
    body = {"jsonrpc": "2.0", "id": 3, "method": "SubscribeToTask", "params": {"id": task["id"]}}
    with httpx.stream(
        "POST", outbound.url, json=body, headers=outbound.headers(), timeout=30
    ) as response:
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert events[0]["result"]["task"]["id"] == task["id"]
    assert events[-1]["error"]["data"]["code"] == "peer_timeout"  # the task never ends
    subscribe = outbound.records()[-1]
    assert subscribe["input"]["action"]["a2a_operation"] == "subscribe"
    assert subscribe["input"]["action"]["operation"] == "read"
    assert len(outbound.records()) == 2


def test_a2a_outbound_the_extended_card_points_at_the_sidecar_too(outbound, peer):
    body = {"jsonrpc": "2.0", "id": 4, "method": "GetExtendedAgentCard", "params": {}}
    card = outbound.post(body).json()["result"]
    assert "audit" in {s["id"] for s in card["skills"]}
    assert [i["url"] for i in card["supportedInterfaces"]] == [outbound.url]
    assert peer.url not in json.dumps(card)
    [record] = outbound.records()
    assert record["input"]["action"]["a2a_operation"] == "extended_card"


def test_a2a_outbound_0_3_names_are_governed_alike(outbound, peer):
    message = {
        "kind": "message",
        "role": "user",
        "messageId": "m03",
        "parts": [{"kind": "text", "text": f"echo {AGENT_EMAIL}"}],
        "metadata": {"skillId": "lookup"},
    }
    body = {"jsonrpc": "2.0", "id": "a", "method": "message/send", "params": {"message": message}}
    answer = outbound.post(body).json()
    assert answer["result"]["kind"] == "message" and answer["id"] == "a"
    assert AGENT_EMAIL not in json.dumps(peer.seen[0].body)
    assert peer.seen[0].headers["a2a-version"] == "0.3"
    # The peer's own A2A error (TaskNotFound) reaches the agent intact, under its id (a task
    # of this agent's the peer has forgotten: another agent's is refused before, s11 item 2).
    outbound.running.sidecar.a2a_outbound.peers["billing"].tasks.record(
        AGENT, {"task:no-such-task"}
    )
    missing = outbound.post(
        {"jsonrpc": "2.0", "id": "b", "method": "tasks/get", "params": {"id": "no-such-task"}}
    ).json()
    assert missing["id"] == "b" and missing["error"]["code"] == -32001
    records = outbound.records()
    assert [r["input"]["action"]["method"] for r in records] == ["message/send", "tasks/get"]
    assert [r["input"]["action"]["name"] for r in records] == ["billing.lookup", "billing."]
    assert [r["outcome"]["code"] for r in records] == ["ok", "upstream_error"]


# --- refused calls ------------------------------------------------------------------------


def test_a2a_outbound_deny_reaches_no_peer_and_is_one_record(outbound, peer):
    answer = outbound.post(_send("echo", skill="wire"))
    error = answer.json()["error"]
    assert answer.status_code == 200 and error["code"] == -32010
    assert error["data"]["code"] == "policy_deny" and error["data"]["decision_id"]
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "policy_deny"
    assert record["action"]["name"] == "billing.wire"


def test_a2a_outbound_step_up_answers_step_up_required_with_the_approval_id(outbound, peer):
    answer = outbound.post(_send("echo refund me", skill="refund"))
    error = answer.json()["error"]
    assert error["code"] == -32011 and error["data"]["code"] == "step_up_required"
    assert error["data"]["approval_id"]
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "approval_required"


def test_a2a_outbound_a_peer_that_hangs_ends_in_peer_timeout(outbound, peer):
    answer = outbound.post(_send("hang"))
    assert answer.json()["error"]["data"]["code"] == "peer_timeout"
    [record] = outbound.records()
    assert record["outcome"]["code"] == "peer_timeout" and record["outcome"]["relayed"]


def test_a2a_outbound_a_peer_that_drips_is_cut_at_the_total_deadline(outbound, peer):
    body = _send("drip")
    body["method"] = "SendStreamingMessage"
    with httpx.stream(
        "POST", outbound.url, json=body, headers=outbound.headers(), timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert len(events) >= 2 and "result" in events[0]
    assert events[-1]["error"]["data"]["code"] == "peer_timeout"
    [record] = outbound.records()
    assert record["outcome"]["code"] == "peer_timeout"
    assert record["upstream"]["events"] == len(events) - 1


def test_a2a_outbound_a_huge_answer_is_bounded(outbound, peer):
    answer = outbound.post(_send("big"))
    assert answer.json()["error"]["data"]["code"] == "peer_response_too_large"
    body = _send("big")
    body["method"] = "SendStreamingMessage"
    streamed = outbound.post(body)
    assert streamed.json()["error"]["data"]["code"] == "peer_response_too_large"
    records = outbound.records()
    assert [r["outcome"]["code"] for r in records] == ["peer_response_too_large"] * 2


def test_a2a_outbound_the_agent_going_away_cancels_the_call_and_is_one_record(outbound, peer):
    body = _send("drip")
    body["method"] = "SendStreamingMessage"
    with httpx.stream(
        "POST", outbound.url, json=body, headers=outbound.headers(), timeout=30
    ) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert "result" in json.loads(first[5:])
    # The agent has closed its connection: the call ends as cancelled, on record once.
    for _ in range(200):
        records = outbound.records()
        if records:
            break
        threading.Event().wait(0.05)
    [record] = records
    assert record["outcome"]["code"] == "cancelled" and record["outcome"]["relayed"]


def test_a2a_outbound_a_huge_message_is_refused_before_any_byte_leaves(outbound, peer):
    answer = outbound.post(_send("echo " + "x" * 20000))
    assert answer.status_code == 413
    assert answer.json()["error"]["data"]["code"] == "message_too_large"
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "message_too_large"


HOSTILE = [
    (b"{not json", -32700, "parse_error"),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "SendMessage"}]', -32600, "invalid_request"),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}',
        -32602,
        "invalid_params",
    ),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "Nope", "params": {}}', -32601, "method_not_found"),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": []}',
        -32602,
        "invalid_params",
    ),
    (b'{"jsonrpc": "2.0", "method": "SendMessage", "params": {}}', -32600, "invalid_request"),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": '
        b'{"parts": "text"}}}',
        -32602,
        "invalid_params",
    ),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": '
        b'{"parts": [{"text": "a"}], "metadata": {"skill": 5}}}}',
        -32602,
        "invalid_params",
    ),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": '
        b'{"parts": [{"text": "a", "data": {}}]}}}',
        -32602,
        "invalid_params",
    ),
    (
        b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": 5}}',
        -32602,
        "invalid_params",
    ),
    (b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "GetTask"}', -32700, "parse_error"),
]


def test_a2a_outbound_malformed_json_rpc_and_wrong_types_each_get_their_code(outbound, peer):
    for raw, rpc_code, code in HOSTILE:
        answer = outbound.post(raw)
        error = answer.json()["error"]
        assert (error["code"], error["data"]["code"]) == (rpc_code, code), raw
    assert peer.seen == []
    records = outbound.records()
    assert len(records) == len(HOSTILE)
    assert {r["outcome"]["code"] for r in records} == {"malformed_request"}
