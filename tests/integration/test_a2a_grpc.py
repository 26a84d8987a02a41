"""Issue 34 item 1, the second door: the agent reaches its peers through the gRPC API
(``CallPeer``, ``StreamPeer``) with the same guarded call as the loopback endpoint.

Real parts: the peer is the official a2a-sdk server under uvicorn (tests/support/a2a_peer.py),
the sidecar runs with its SVID from a development Workload API (identity mode jwt: the agent
presents its JWT-SVID as gRPC metadata), and the agent is the SDK's ``SidecarClient`` over a
real gRPC unix socket. Every call leaves exactly one audit record, whatever its end.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from examples.demo.run import free_port
from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.client import (
    InvalidRequest,
    PolicyDenied,
    SidecarCallError,
    SidecarClient,
    StepUpRequired,
    Unavailable,
)
from tests.conftest import SIDECAR_AUDIENCE, audit_lines
from tests.support.a2a_peer import PEER_SECRET_EMAIL, PeerAgent
from tests.support.policies import write_policy
from tests.support.settle import poll

AGENT = "spiffe://demo.example/agent/support"
PEER_AUDIENCE = "spiffe://demo.example/agent/billing"
AGENT_EMAIL = "dave.agent@example.com"

# The outbound tests' policy (tests/integration/test_a2a_outbound.py), with a granted
# approval letting the stepped-up refund through once.
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

allowed_skill(skill) if skill == ""

allowed_skill(skill) if {
    skill == "lookup"
    skill in input.action.card.skills
}

allowed_skill(skill) if {
    skill == "refund"
    input.approval.id
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
    not input.approval
}
"""

PEER = {
    "billing": {
        "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
        "timeout_s": 3,
        "max_message_bytes": 16384,
        "max_response_bytes": 65536,
        "skills": {"refund": {"operation": "act"}, "lookup": {"operation": "read"}},
    }
}


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


class Door:
    """The running sidecar, the agent's gRPC client, and its loopback endpoint (to compare)."""

    def __init__(self, running: Any, token: str) -> None:
        self.running = running
        self.token = token
        self.client = SidecarClient(running.address, jwt_svid=lambda: token, timeout_s=30)
        self.channel = grpc.insecure_channel(running.address)

    def records(self) -> list[dict[str, Any]]:
        return audit_lines(Path(self.running.audit_path))

    def raw(self, request: sidecar_pb2.CallPeerRequest, rpc: str = "CallPeer") -> Any:
        """The RPC with a request the SDK would never build (hostile params_json)."""
        method = self.channel.unary_unary(
            f"/agentsidecar.v1.Sidecar/{rpc}",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=sidecar_pb2.CallPeerResponse.FromString,
        )
        return method(request, timeout=30, metadata=[("authorization", f"Bearer {self.token}")])

    def http(self, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.running.sidecar.a2a_outbound.base_url}/peers/billing"
        return httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


@pytest.fixture
def door(start_jwt_sidecar, authority, peer, tmp_path) -> Iterator[Door]:
    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": PEER["billing"] | {"url": peer.url},
            # nothing listens there: every call ends before its card can be had
            "gone": PEER["billing"] | {"url": f"http://127.0.0.1:{free_port()}"},
        },
    )
    opened = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    yield opened
    opened.client.close()
    opened.channel.close()


def _message(text: str, skill: str = "", msg_id: str = "m1") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "ROLE_USER", "messageId": msg_id, "parts": [{"text": text}]}
    if skill:
        message["metadata"] = {"skill": skill}
    return {"message": message}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _error(exc: grpc.RpcError) -> sidecar_pb2.CallError:
    [detail] = rpc_status.from_call(exc).details  # type: ignore[arg-type, union-attr]
    error = sidecar_pb2.CallError()
    assert detail.Unpack(error)
    return error


# --- allowed calls ------------------------------------------------------------------------


def test_item1_grpc_call_peer_is_one_guarded_call_with_the_peers_credential(door, peer):
    answer = door.client.call_peer("billing", "SendMessage", _message("echo hello", "lookup"))
    assert answer.result["message"]["parts"][0]["text"] == "peer heard: echo hello"
    assert answer.error is None
    assert answer.decision.effect == "allow" and answer.decision.decision_id
    [seen] = peer.seen
    auth = seen.headers["authorization"]
    assert door.token not in json.dumps(seen.headers)
    assert _claims(auth.removeprefix("Bearer "))["aud"] in (PEER_AUDIENCE, [PEER_AUDIENCE])
    assert seen.body["method"] == "SendMessage" and seen.headers["a2a-version"] == "1.0"
    [record] = door.records()
    assert record["decision_id"] == answer.decision.decision_id
    assert record["rpc"] == "A2A SendMessage" and record["outcome"]["code"] == "ok"
    action = record["input"]["action"]
    assert action["kind"] == "a2a" and action["name"] == "billing.lookup"
    assert (action["operation"], action["a2a_operation"]) == ("read", "send")
    assert action["card"]["skills"] == ["refund", "lookup"]
    assert record["subject"]["spiffe_id"] == AGENT


def test_item1_grpc_outgoing_and_incoming_parts_are_redacted(door, peer):
    sent = door.client.call_peer("billing", "SendMessage", _message(f"echo mail {AGENT_EMAIL}"))
    assert AGENT_EMAIL not in json.dumps(peer.seen[0].body)
    assert "[REDACTED:email]" in peer.seen[0].body["params"]["message"]["parts"][0]["text"]
    assert AGENT_EMAIL not in json.dumps(sent.result)
    leaked = door.client.call_peer("billing", "SendMessage", _message("leak"))
    assert leaked.result["message"]["parts"][0]["text"] == "write to [REDACTED:email]"
    records = door.records()
    assert [r["outcome"]["code"] for r in records] == ["ok", "ok"]
    assert PEER_SECRET_EMAIL not in json.dumps(records) and AGENT_EMAIL not in json.dumps(records)


def test_item1_grpc_stream_peer_relays_event_by_event_redacted_across_chunks(door, peer):
    events = list(door.client.stream_peer("billing", "SendStreamingMessage", _message("stream")))
    assert events[0].decision is not None and events[0].decision.effect == "allow"
    assert all(e.decision is None for e in events[1:])
    assert "task" in events[0].result and "statusUpdate" in events[-1].result
    texts = [
        e.result["artifactUpdate"]["artifact"]["parts"][0]["text"]
        for e in events
        if "artifactUpdate" in e.result
    ]
    assert "".join(texts) == "part one, mail [REDACTED:email], done"
    assert peer.seen[0].body["method"] == "SendStreamingMessage"
    [record] = door.records()
    assert record["outcome"]["code"] == "ok" and record["upstream"]["events"] == 5
    assert record["decision_id"] == events[0].decision.decision_id
    assert PEER_SECRET_EMAIL not in json.dumps(record)


def test_item1_grpc_task_get_cancel_and_the_peers_own_error(door, peer):
    params = _message("task") | {"configuration": {"returnImmediately": True}}
    task = door.client.call_peer("billing", "SendMessage", params).result["task"]
    got = door.client.call_peer("billing", "GetTask", {"id": task["id"]})
    assert got.result["id"] == task["id"]
    cancelled = door.client.call_peer("billing", "CancelTask", {"id": task["id"]})
    assert cancelled.result["status"]["state"] == "TASK_STATE_CANCELED"
    # The peer's own A2A error is an answer (error, not a raised refusal), as on HTTP (a task
    # of this agent's the peer has forgotten: another agent's is refused first, s11 item 2).
    door.running.sidecar.a2a_outbound.peers["billing"].tasks.record(AGENT, {"task:no-such-task"})
    missing = door.client.call_peer("billing", "GetTask", {"id": "no-such-task"})
    assert missing.result is None and missing.error["code"] == -32001
    assert missing.decision.effect == "allow"
    records = door.records()
    assert [r["input"]["action"]["a2a_operation"] for r in records] == [
        "send",
        "get_task",
        "cancel_task",
        "get_task",
    ]
    assert [r["outcome"]["code"] for r in records] == ["ok", "ok", "ok", "upstream_error"]


def test_item1_grpc_stream_peer_answers_a_unary_operation_as_one_event(door, peer):
    [event] = door.client.stream_peer("billing", "SendMessage", _message("echo one"))
    assert event.decision.effect == "allow"
    assert event.result["message"]["parts"][0]["text"] == "peer heard: echo one"
    assert len(door.records()) == 1


# --- refused calls ------------------------------------------------------------------------


def test_item1_grpc_a_denied_skill_reaches_no_peer_and_is_one_record(door, peer):
    with pytest.raises(PolicyDenied) as denied:
        door.client.call_peer("billing", "SendMessage", _message("echo", "wire"))
    assert denied.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.code == "policy_deny" and denied.value.decision_id
    assert denied.value.reasons == ("not granted",)
    assert peer.seen == []
    [record] = door.records()
    assert record["outcome"]["code"] == "policy_deny"
    assert record["action"]["name"] == "billing.wire"
    assert record["decision_id"] == denied.value.decision_id


def test_item1_grpc_step_up_gives_the_approval_id_and_the_approved_retry_goes_once(door, peer):
    params = _message("echo refund A-1", "refund")
    with pytest.raises(StepUpRequired) as stepped:
        door.client.call_peer("billing", "SendMessage", params, wait=False)
    assert stepped.value.status == grpc.StatusCode.FAILED_PRECONDITION
    approval_id = stepped.value.approval_id
    assert approval_id and peer.seen == []
    with door.running.approvals() as approvals:
        approvals.approve(approval_id, reason="refund ok")
    retried = door.client.call_peer("billing", "SendMessage", params, approval_id=approval_id)
    assert retried.result["message"]["parts"][0]["text"] == "peer heard: echo refund A-1"
    with pytest.raises(PolicyDenied) as again:
        door.client.call_peer("billing", "SendMessage", params, approval_id=approval_id)
    assert again.value.code == "approval_used"
    # The approval is bound to the request as sent: other params cannot use it.
    assert len(peer.seen) == 1
    codes = [r["outcome"]["code"] for r in door.records()]
    assert codes == ["approval_required", "ok", "approval_used"]


def test_item1_grpc_step_up_waits_for_the_approver_within_the_deadline(door, peer):
    approved = threading.Event()

    def approver() -> None:
        with door.running.approvals() as approvals:
            for event in approvals.watch():
                if event.type in ("pending", "created"):
                    approvals.approve(event.approval.id, reason="go")
                    approved.set()
                    return

    threading.Thread(target=approver, daemon=True).start()
    answer = door.client.call_peer("billing", "SendMessage", _message("echo wait", "refund"))
    assert answer.result["message"]["parts"][0]["text"] == "peer heard: echo wait"
    assert approved.is_set()


def test_item1_grpc_unknown_peer_is_not_found_with_its_code_and_one_record(door, peer):
    with pytest.raises(InvalidRequest) as unknown:
        door.client.call_peer("nobody", "SendMessage", _message("echo"))
    assert unknown.value.status == grpc.StatusCode.NOT_FOUND
    assert unknown.value.code == "unknown_peer"
    [record] = door.records()
    assert record["outcome"]["code"] == "unknown_peer" and record["rpc"] == "CallPeer"
    assert peer.seen == []


def test_item1_grpc_no_peers_configured_is_unknown_peer(start_jwt_sidecar, authority):
    running = start_jwt_sidecar()
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    with SidecarClient(running.address, jwt_svid=lambda: token) as client:
        with pytest.raises(InvalidRequest) as unknown:
            client.call_peer("billing", "GetTask", {"id": "t"})
        with pytest.raises(InvalidRequest):
            list(client.stream_peer("billing", "SubscribeToTask", {"id": "t"}))
    assert unknown.value.code == "unknown_peer"
    records = audit_lines(Path(running.audit_path))
    assert [r["outcome"]["code"] for r in records] == ["unknown_peer", "unknown_peer"]


# (params_json, operation, the CallError code: the loopback endpoint's data.code)
HOSTILE = [
    ("{not json", "SendMessage", "parse_error"),
    ('{"message": {}, "message": {}}', "SendMessage", "parse_error"),  # repeated key
    ('{"id": NaN}', "GetTask", "parse_error"),
    # params that would add a member to the JSON-RPC envelope if pasted in unchecked
    ('{"id": "t"}, "method": "CancelTask"', "GetTask", "parse_error"),
    ('{"id": "t"}, "id": 5', "GetTask", "parse_error"),
    ("[]", "SendMessage", "invalid_params"),
    ('"text"', "SendMessage", "invalid_params"),
    ("{}", "SendMessage", "invalid_params"),
    ('{"message": {"parts": "text"}}', "SendMessage", "invalid_params"),
    (
        '{"message": {"parts": [{"text": "a"}], "metadata": {"skill": 5}}}',
        "SendMessage",
        "invalid_params",
    ),
    (
        '{"message": {"parts": [{"text": "a"}], "metadata": {"skill": ""}}}',
        "SendMessage",
        "invalid_params",
    ),
    ('{"id": 5}', "GetTask", "invalid_params"),
    ('{"task_id": "t", "id": "t"}', "GetTask", "invalid_params"),  # snake_case alias
    ('{"id": "t"}', "Nope", "method_not_found"),
    ('{"id": "t"}', "", "invalid_request"),
    ('{"id": "t"}', "SubscribeToTask", "invalid_request"),  # streams: StreamPeer
    (
        '{"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "a"}]}}',
        "SendStreamingMessage",
        "invalid_request",
    ),
]


def test_item1_grpc_malformed_params_each_get_their_code_and_reach_no_peer(door, peer):
    for params_json, operation, code in HOSTILE:
        request = sidecar_pb2.CallPeerRequest(
            peer="billing", operation=operation, params_json=params_json
        )
        with pytest.raises(grpc.RpcError) as refused:
            door.raw(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, params_json
        assert _error(refused.value).code == code, params_json
    assert peer.seen == []
    records = door.records()
    assert len(records) == len(HOSTILE)
    assert {r["outcome"]["code"] for r in records} == {"malformed_request"}


def test_item1_grpc_undecodable_and_wrong_typed_requests_are_refused_and_audited(door, peer):
    for raw in (b"\xff\xff\xff", b"\x0a\x05bill"):  # not protobuf; a truncated field
        with pytest.raises(grpc.RpcError) as refused:
            door.raw(raw)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _error(refused.value).code == "malformed_request"
    # a string field holding bytes that are not UTF-8 (protobuf refuses to decode it)
    with pytest.raises(grpc.RpcError) as refused:
        door.raw(b"\x0a\x02\xc3\x28")
    assert _error(refused.value).code == "malformed_request"
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in door.records()] == ["malformed_request"] * 3


def test_item1_grpc_oversized_requests_are_refused_before_any_byte_leaves(door, peer):
    big = _message("echo " + "x" * 20000)  # over the peer's max_message_bytes (16 KiB)
    with pytest.raises(SidecarCallError) as too_large:
        door.client.call_peer("billing", "SendMessage", big)
    assert too_large.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert too_large.value.code == "message_too_large"
    many = _message("echo")
    many["message"]["parts"] = [{"text": "a"}] * 257  # small, but over 256 parts
    with pytest.raises(SidecarCallError) as too_many:
        door.client.call_peer("billing", "SendMessage", many)
    assert too_many.value.code == "message_too_large"
    limit = door.running.settings.server.max_request_bytes
    huge = _message("echo " + "x" * (limit + 10))  # over server.max_request_bytes
    with pytest.raises(InvalidRequest) as over:
        door.client.call_peer("billing", "SendMessage", huge)
    assert over.value.code == "request_too_large"
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in door.records()] == [
        "message_too_large",
        "message_too_large",
        "request_too_large",
    ]
    # Past gRPC's own ceiling (4x the limit) the transport refuses before any handler.
    ceiling = sidecar_pb2.CallPeerRequest(
        peer="billing", operation="SendMessage", params_json=" " * (4 * limit + 8192)
    )
    with pytest.raises(grpc.RpcError) as refused:
        door.raw(ceiling)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(door.records()) == 3 and peer.seen == []


def test_item1_grpc_a_hanging_peer_ends_in_peer_timeout(door, peer):
    with pytest.raises(Unavailable) as hung:
        door.client.call_peer("billing", "SendMessage", _message("hang"))
    assert hung.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert hung.value.code == "peer_timeout" and hung.value.decision_id
    [record] = door.records()
    assert record["outcome"]["code"] == "peer_timeout" and record["outcome"]["relayed"]


def test_item1_grpc_an_unreachable_peer_is_unavailable_and_one_record(door, peer):
    for call in (
        lambda: door.client.call_peer("gone", "GetTask", {"id": "t"}),
        lambda: list(door.client.stream_peer("gone", "SubscribeToTask", {"id": "t"})),
    ):
        with pytest.raises(Unavailable) as gone:
            call()
        assert gone.value.status == grpc.StatusCode.UNAVAILABLE
        assert gone.value.code == "peer_unavailable"
    records = door.records()
    assert [r["outcome"]["code"] for r in records] == ["peer_unavailable"] * 2
    assert not any(r["outcome"]["relayed"] for r in records)


def test_item1_grpc_a_dripping_stream_is_cut_at_the_total_deadline(door, peer):
    events = []
    with pytest.raises(Unavailable) as cut:
        for event in door.client.stream_peer("billing", "SendStreamingMessage", _message("drip")):
            events.append(event)
    assert cut.value.code == "peer_timeout"
    assert len(events) >= 2 and events[0].decision.effect == "allow"
    [record] = door.records()
    assert record["outcome"]["code"] == "peer_timeout"
    assert record["upstream"]["events"] == len(events)


def test_item1_grpc_a_huge_answer_is_bounded_unary_and_streamed(door, peer):
    with pytest.raises(SidecarCallError) as unary:
        door.client.call_peer("billing", "SendMessage", _message("big"))
    assert unary.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert unary.value.code == "peer_response_too_large"
    with pytest.raises(SidecarCallError) as streamed:
        list(door.client.stream_peer("billing", "SendStreamingMessage", _message("big")))
    assert streamed.value.code == "peer_response_too_large"
    codes = [r["outcome"]["code"] for r in door.records()]
    assert codes == ["peer_response_too_large"] * 2


def test_item1_grpc_the_agent_going_away_mid_stream_is_one_cancelled_record(door, peer):
    stream = door.client.stream_peer("billing", "SendStreamingMessage", _message("drip"))
    first = next(stream)
    assert first.decision.effect == "allow"
    stream.close()  # the agent cancels the RPC
    [record] = poll(door.records, what="the cancelled call's record")
    assert record["outcome"]["code"] == "cancelled" and record["outcome"]["relayed"]


# --- one guarded call, two doors ----------------------------------------------------------


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What policy saw and what was audited, without what differs per call (ids, times,
    latencies) or per door (the rpc name)."""
    policy_input = dict(record["input"])
    for key in ("request_id", "time_ns"):
        policy_input.pop(key, None)
    return {
        "input": policy_input,
        "action": record["action"],
        "decision": {k: v for k, v in record["decision"].items() if k != "decision_id"},
        "outcome": record["outcome"]["code"],
        "upstream": {k: v for k, v in record["upstream"].items() if k != "result"},
    }


def test_item1_grpc_and_http_give_policy_the_same_input_for_the_same_message(door, peer):
    params = _message(f"echo mail {AGENT_EMAIL} about A-7", "lookup", msg_id="same")
    params["message"]["metadata"]["ticket"] = "T-9"
    params["configuration"] = {"historyLength": 2}
    http = door.http({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": params})
    assert "result" in http.json()
    answer = door.client.call_peer("billing", "SendMessage", params)
    assert answer.result["message"]["parts"] == http.json()["result"]["message"]["parts"]
    http_record, grpc_record = door.records()
    assert http_record["rpc"] == grpc_record["rpc"] == "A2A SendMessage"
    assert "email" in grpc_record["input"]["action"]["data_classes"]
    assert _comparable(grpc_record) == _comparable(http_record)
    # The peer received the same redacted params through either door.
    assert peer.seen[0].body["params"] == peer.seen[1].body["params"]


def test_review_s10_final_a_refusal_that_cannot_be_audited_says_so(
    start_jwt_sidecar, authority, peer, tmp_path
):
    """Found in the final review (session 10): a malformed CallPeer whose refusal could not be
    audited answered ``parse_error``: the wire code overwrote ``audit_unavailable``, hiding the
    outage from the agent. Fail closed, and say why."""
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        audit={"path": "/dev/full", "mode": "strict"},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={"billing": PEER["billing"] | {"url": peer.url}},
    )
    door = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    try:
        request = sidecar_pb2.CallPeerRequest(
            peer="billing", operation="SendMessage", params_json="{not json"
        )
        with pytest.raises(grpc.RpcError) as refused:
            door.raw(request)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _error(refused.value).code == "audit_unavailable"
        assert peer.seen == []
    finally:
        door.client.close()
        door.channel.close()
