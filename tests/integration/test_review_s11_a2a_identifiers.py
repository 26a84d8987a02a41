"""Review session 11, findings 1 and 7 (A2A), end to end against real parts.

1: data in the protocol's identifier and enum positions (messageId, extensions,
referenceTaskIds, acceptedOutputModes, tenant, contextId, status.state, artifactId, task id,
role, the JSON-RPC id) is classified and, under redact_response, redacted, in both
directions; over-long or over-many identifiers are refused by the parser; ordinary ids and
enums pass byte-identical. 7: a request naming its skill in two places that differ is refused
(``skill_mismatch``) on the loopback endpoint, the gRPC CallPeer door and the inbound listener.

The peers are the official a2a-sdk server (tests/support/a2a_peer.py) and a hostile Starlette
peer that answers with chosen ids (:class:`IdPeer`); the outbound sidecar runs the shipped
policy (rego/: sensitive classes are never sent, secrets and keys never come back).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sidecar.client import SidecarCallError
from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_grpc import PEER as GRPC_PEER
from tests.integration.test_a2a_grpc import POLICY as GRPC_POLICY
from tests.integration.test_a2a_grpc import Door
from tests.integration.test_a2a_inbound import agent as agent
from tests.integration.test_a2a_inbound import client_tls, message, post, records
from tests.integration.test_a2a_inbound import idp as idp
from tests.integration.test_a2a_inbound import inbound as inbound
from tests.integration.test_a2a_outbound import AGENT, PEER_AUDIENCE, Outbound, _send
from tests.support.a2a_peer import PeerAgent
from tests.support.mcp_gateway import ROOT
from tests.support.policies import write_policy

PLANNER = "spiffe://demo.example/agent/planner"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
KEY = "AKIAIOSFODNN7EXAMPLE"


class IdPeer:
    """A peer whose answers put :data:`KEY` (text ``leak``) or ordinary ids (any other text)
    in every identifier and enum position, unary and streamed. Keeps each request body."""

    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        card = AgentCard(
            name="billing",
            description="a peer choosing its ids",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="lookup", name="lookup", description="l", tags=["r"])],
        )
        card_doc = MessageToDict(card)

        async def card_route(request: Request) -> JSONResponse:
            return JSONResponse(card_doc)

        async def rpc(request: Request) -> Response:
            body = await request.json()
            self.seen.append(body)
            text = body["params"]["message"]["parts"][0]["text"]
            task = _task(KEY if text.startswith("leak") else "")
            if body["method"] == "SendStreamingMessage":
                events = [
                    {"jsonrpc": "2.0", "id": body["id"], "result": result}
                    for result in _events(task)
                ]
                self.sent.extend(events)
                chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
                return StreamingResponse(iter(chunks), media_type="text/event-stream")
            answer = {"jsonrpc": "2.0", "id": body["id"], "result": {"task": task}}
            self.sent.append(answer)
            return JSONResponse(answer)

        app = Starlette(
            routes=[
                Route("/.well-known/agent-card.json", card_route),
                Route("/", rpc, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(1000):
            if self._server.started:
                break
            self._thread.join(0.01)
        assert self._server.started, "the peer did not start"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def _task(secret: str) -> dict[str, Any]:
    """A completed task; ``secret`` (when given) in each identifier and enum position."""
    mark = (lambda v: f"{v}-{secret}") if secret else (lambda v: v)
    return {
        "id": mark("4f0c9a4e-9a57-4b8e-8c1e-0d6f1f2f7a10"),
        "contextId": mark("c-2026-12-05"),
        "status": {
            "state": mark("TASK_STATE_COMPLETED"),
            "timestamp": mark("2026-12-05T04:30:00Z"),
        },
        "history": [
            {
                "messageId": mark("m-1"),
                "role": mark("ROLE_AGENT"),
                "extensions": [mark("https://example.com/ext/v1")],
                "referenceTaskIds": [mark("t-0")],
                "parts": [{"text": "done", "mediaType": mark("text/plain")}],
            }
        ],
        "artifacts": [{"artifactId": mark("a-1"), "parts": [{"text": "result"}]}],
    }


def _events(task: dict[str, Any]) -> list[dict[str, Any]]:
    working = {"state": "TASK_STATE_WORKING"}
    return [
        {"task": {"id": task["id"], "contextId": task["contextId"], "status": working}},
        {
            "artifactUpdate": {
                "taskId": task["id"],
                "contextId": task["contextId"],
                "artifact": task["artifacts"][0],
                "lastChunk": True,
            }
        },
        {
            "statusUpdate": {
                "taskId": task["id"],
                "contextId": task["contextId"],
                "status": task["status"],
            }
        },
    ]


def _peers(url: str) -> dict[str, Any]:
    return {
        "billing": {
            "url": url,
            "credential": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
            "timeout_s": 5,
            "skills": {"lookup": {"operation": "read"}, "refund": {"operation": "act"}},
        }
    }


@pytest.fixture
def peer() -> Iterator[PeerAgent]:
    agent = PeerAgent()
    yield agent
    agent.stop()


@pytest.fixture
def id_peer() -> Iterator[IdPeer]:
    agent = IdPeer()
    yield agent
    agent.stop()


@pytest.fixture
def baseline(start_jwt_sidecar, authority, peer) -> Outbound:
    """The shipped policy in front of the a2a-sdk peer."""
    running = start_jwt_sidecar(
        policy={"dir": str(ROOT / "rego")},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers=_peers(peer.url),
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


@pytest.fixture
def answers(start_jwt_sidecar, authority, id_peer) -> Outbound:
    """The shipped policy in front of the peer that chooses its ids."""
    running = start_jwt_sidecar(
        policy={"dir": str(ROOT / "rego")},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers=_peers(id_peer.url),
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


@pytest.fixture
def grpc_door(start_jwt_sidecar, authority, peer, tmp_path) -> Iterator[Door]:
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", GRPC_POLICY))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={"billing": GRPC_PEER["billing"] | {"url": peer.url}},
    )
    opened = Door(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))
    yield opened
    opened.client.close()
    opened.channel.close()


def _lookup(text: str = "echo hello") -> dict[str, Any]:
    return _send(text, skill="lookup")


def _with(body: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    """``body`` with ``value`` at ``where`` (a dotted path under params; ``id``: the rpc id)."""
    if where == "id":
        body["id"] = value
        return body
    node = body["params"]
    *path, last = where.split(".")
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value
    return body


# --- finding 1, outbound: a class in an identifier position is classified -----------------


@pytest.mark.parametrize(
    ("where", "value", "cls"),
    [
        ("message.messageId", f"card {CARD}", "credit_card"),
        ("message.extensions", [f"ssn {SSN}"], "us_ssn"),
        ("configuration.acceptedOutputModes", ["text/plain", KEY], "secret"),
        ("tenant", f"ssn-{SSN}", "us_ssn"),
        ("message.contextId", f"ctx-{KEY}", "secret"),
        ("id", CARD, "credit_card"),
    ],
)
def test_item1_a_class_in_an_identifier_position_is_denied_by_the_shipped_policy(
    baseline, peer, where, value, cls
):
    answer = baseline.post(_with(_lookup(), where, value))
    error = answer.json()["error"]
    assert error["data"]["code"] == "policy_deny", answer.text
    assert peer.seen == []
    [record] = baseline.records()
    assert record["outcome"]["code"] == "policy_deny"
    assert cls in record["action"]["data_classes"]
    for secret in (CARD, SSN, KEY):
        assert secret not in json.dumps(record)


def test_item1_reference_task_ids_carrying_a_class_never_reach_the_peer(baseline, peer):
    answer = baseline.post(_with(_lookup(), "message.referenceTaskIds", [f"key {KEY}"]))
    assert "error" in answer.json(), answer.text
    assert peer.seen == []
    [record] = baseline.records()
    # policy denies the class; a peer-task ownership check (if it runs first) refuses it too
    assert record["outcome"]["code"] in ("policy_deny", "task_not_owned")
    if record["outcome"]["code"] == "policy_deny":
        assert "secret" in record["action"]["data_classes"]


def test_item1_the_probe_request_is_denied_with_every_class_on_record(baseline, peer):
    """review_s11 test_probe_keep_exfil.py: before the fix, ok with data_classes []."""
    body = _send("echo hello", skill="lookup", msg_id=f"card {CARD}")
    body["params"]["message"]["extensions"] = [f"ssn {SSN}"]
    body["params"]["configuration"] = {"acceptedOutputModes": [f"card {CARD}", KEY]}
    body["params"]["tenant"] = f"ssn-{SSN}"
    error = baseline.post(body).json()["error"]
    assert error["data"]["code"] == "policy_deny"
    assert peer.seen == []
    [record] = baseline.records()
    assert record["action"]["data_classes"] == ["credit_card", "secret", "us_ssn"]


def test_item1_ordinary_ids_and_enums_reach_the_peer_byte_identical(baseline, peer):
    body = _send("echo hello", skill="lookup", msg_id="9b2f6d1c-3e4a-4c5b-8d7e-1f2a3b4c5d6e")
    body["params"]["message"]["extensions"] = ["https://a2a.example.com/ext/trace/v1"]
    body["params"]["configuration"] = {"acceptedOutputModes": ["text/plain", "application/json"]}
    answer = baseline.post(body)
    assert "result" in answer.json(), answer.text
    [seen] = peer.seen
    assert seen.body["params"] == body["params"]
    [record] = baseline.records()
    assert record["outcome"]["code"] == "ok" and record["action"]["data_classes"] == []


# --- finding 1, the answer direction: the peer's identifier positions are redacted ---------


def _positions(answer: dict[str, Any]) -> list[str]:
    task = answer["result"]["task"]
    [history] = task["history"]
    return [
        task["id"],
        task["contextId"],
        task["status"]["state"],
        task["status"]["timestamp"],
        history["messageId"],
        history["role"],
        history["extensions"][0],
        history["referenceTaskIds"][0],
        history["parts"][0]["mediaType"],
        task["artifacts"][0]["artifactId"],
    ]


def test_item1_a_key_in_the_peers_identifier_positions_never_reaches_the_agent(answers, id_peer):
    answer = answers.post(_lookup("leak ids"))
    assert KEY in json.dumps(id_peer.sent) and KEY not in answer.text, answer.text
    assert all("[REDACTED:secret]" in value for value in _positions(answer.json()))
    [record] = answers.records()
    assert record["outcome"]["code"] == "ok" and KEY not in json.dumps(record)


def test_item1_a_key_in_streamed_identifier_positions_never_reaches_the_agent(answers, id_peer):
    body = _lookup("leak ids")
    body["method"] = "SendStreamingMessage"
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            answers.url,
            json=body,
            headers=answers.headers(**{"Content-Type": "application/json"}),
        ) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert len(events) == 3 and KEY in json.dumps(id_peer.sent)
    assert KEY not in json.dumps(events)
    update = events[2]["result"]["statusUpdate"]
    assert "[REDACTED:secret]" in update["status"]["state"]
    assert "[REDACTED:secret]" in update["taskId"]
    assert "[REDACTED:secret]" in events[1]["result"]["artifactUpdate"]["artifact"]["artifactId"]


def test_item1_ordinary_ids_in_the_peers_answer_reach_the_agent_byte_identical(answers, id_peer):
    answer = answers.post(_lookup("plain ids"))
    assert answer.json()["result"] == id_peer.sent[0]["result"], answer.text


# --- finding 1: the parser bounds identifiers ----------------------------------------------

LONG = "x" * 257
MANY = [f"id-{i}" for i in range(65)]


@pytest.mark.parametrize(
    ("where", "value", "code"),
    [
        ("message.messageId", LONG, "invalid_params"),
        ("tenant", LONG, "invalid_params"),
        ("message.extensions", [LONG], "invalid_params"),
        ("message.extensions", MANY, "invalid_params"),
        ("message.referenceTaskIds", [LONG], "invalid_params"),
        ("message.referenceTaskIds", MANY, "too_many_references"),
        ("configuration.acceptedOutputModes", MANY, "invalid_params"),
        ("configuration.acceptedOutputModes", [LONG], "invalid_params"),
        ("message.messageId", {"nested": CARD}, "invalid_params"),
        ("message.extensions", f"ssn {SSN}", "invalid_params"),
        ("message.referenceTaskIds", [["t-1"]], "invalid_params"),
    ],
)
def test_item1_over_long_over_many_or_wrong_typed_identifiers_are_refused(
    baseline, peer, where, value, code
):
    answer = baseline.post(_with(_lookup(), where, value))
    error = answer.json()["error"]
    assert error["data"]["code"] == code, answer.text
    assert peer.seen == []
    [record] = baseline.records()
    assert record["outcome"]["code"] in ("malformed_request", code)


def test_item1_identifiers_at_the_bound_pass(baseline, peer):
    body = _lookup()
    body["params"]["message"]["messageId"] = "m" * 256
    body["params"]["message"]["extensions"] = [f"https://e.example/{i}" for i in range(64)]
    assert "result" in baseline.post(body).json()
    assert peer.seen[0].body["params"]["message"] == body["params"]["message"]


# --- finding 7: one skill per request, both doors ------------------------------------------

MISMATCHES = [
    ({"skill": "lookup", "skill_id": "refund"}, None),
    ({"skillId": "lookup", "skill_id": "refund"}, None),
    ({"skill": "lookup"}, {"skill": "refund"}),
    ({"skill": "lookup"}, {"skillId": "refund"}),
    ({"skill": "lookup"}, {"skill_id": "refund"}),
    ({"skill": "lookup"}, {"skill": 7}),
    (None, {"skill": "lookup", "skill_id": "refund"}),
]


def _named_twice(message_metadata: Any, params_metadata: Any) -> dict[str, Any]:
    body = _send("echo hello")
    if message_metadata is not None:
        body["params"]["message"]["metadata"] = message_metadata
    if params_metadata is not None:
        body["params"]["metadata"] = params_metadata
    return body


@pytest.mark.parametrize(("message_metadata", "params_metadata"), MISMATCHES)
def test_item7_two_skills_are_refused_at_the_loopback_door(
    baseline, peer, message_metadata, params_metadata
):
    answer = baseline.post(_named_twice(message_metadata, params_metadata))
    error = answer.json()["error"]
    assert error["data"]["code"] == "skill_mismatch" and error["code"] == -32602, answer.text
    assert peer.seen == []
    [record] = baseline.records()
    assert record["outcome"]["code"] == "skill_mismatch"  # the same code at every door


def test_item7_the_skill_named_only_in_params_metadata_is_the_one_policy_decides(baseline, peer):
    """params.metadata.skill alone is the request's skill (the peer may read it there)."""
    answer = baseline.post(_named_twice(None, {"skill": "close_account"}))
    assert answer.json()["error"]["data"]["code"] == "policy_deny"
    assert peer.seen == []
    [record] = baseline.records()
    assert any("close_account" in reason for reason in record["decision"]["reasons"])
    same = baseline.post(_named_twice({"skill": "lookup"}, {"skillId": "lookup"}))
    assert "result" in same.json(), same.text


@pytest.mark.parametrize(("message_metadata", "params_metadata"), MISMATCHES[:3])
def test_item7_two_skills_are_refused_at_the_grpc_door(
    grpc_door, peer, message_metadata, params_metadata
):
    params = _named_twice(message_metadata, params_metadata)["params"]
    with pytest.raises(SidecarCallError) as refused:
        grpc_door.client.call_peer("billing", "SendMessage", params)
    assert refused.value.code == "skill_mismatch"
    assert peer.seen == []
    assert len(grpc_door.records()) == 1


def test_item7_two_skills_are_refused_at_the_inbound_listener(inbound, agent, authority, tmp_path):
    tls = client_tls(authority, tmp_path, PLANNER)
    body = message("refund order 7")  # message.metadata.skill: refund (allowed)
    body["params"]["message"]["metadata"]["skill_id"] = "lookup"
    answer = post(inbound, body, tls=tls)
    assert answer.json()["error"]["data"]["code"] == "skill_mismatch", answer.text
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "skill_mismatch"


def test_item1_inbound_identifier_positions_are_classified(inbound, agent, authority, tmp_path):
    tls = client_tls(authority, tmp_path, PLANNER)
    body = message("refund order 7")
    body["params"]["message"]["messageId"] = f"m-{KEY}"
    body["params"]["message"]["extensions"] = [f"ssn {SSN}"]
    answer = post(inbound, body, tls=tls)
    assert "result" in answer.json(), answer.text  # the test policy does not look at classes
    [record] = records(inbound.audit_path)
    assert record["action"]["data_classes"] == ["secret", "us_ssn"]
    assert KEY not in json.dumps(record) and SSN not in json.dumps(record)
