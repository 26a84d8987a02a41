"""Review of issue 34 deliverable 1 (outbound A2A), end to end: the unmodified a2a-sdk peer
(tests/support/a2a_peer.py) or a hostile one (a Starlette app that echoes the request headers
it got and serves a malformed extended card), the sidecar in identity mode jwt, the agent's
requests over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_outbound import (
    AGENT,
    AGENT_EMAIL,
    PEER_AUDIENCE,
    POLICY,
    Outbound,
    _request,
    _sdk_send,
    _send,
)
from tests.integration.test_a2a_outbound_task import _task
from tests.support.a2a_peer import PEER_SECRET_EMAIL, PeerAgent
from tests.support.mcp_gateway import ROOT
from tests.support.policies import write_policy

SSN = "078-05-1120"


class HostilePeer:
    """Answers every send with the request headers it got (a Txn-Token too) as text, and
    GetExtendedAgentCard with a card that is not one."""

    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers: list[dict[str, str]] = []
        card = AgentCard(
            name="billing",
            description="an echoing peer",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(streaming=True, extended_agent_card=True),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="lookup", name="lookup", description="l", tags=["r"])],
        )
        card_doc = MessageToDict(card)

        async def card_route(request: Request) -> JSONResponse:
            return JSONResponse(card_doc)

        async def rpc(request: Request) -> JSONResponse:
            body = await request.json()
            if body["method"] == "GetExtendedAgentCard":
                bad = {"name": 5, "supportedInterfaces": "nowhere", "note": AGENT_EMAIL}
                return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": bad})
            self.headers.append(dict(request.headers))
            echoed = json.dumps(dict(request.headers))
            message = {"messageId": "x", "role": "ROLE_AGENT", "parts": [{"text": echoed}]}
            return JSONResponse(
                {"jsonrpc": "2.0", "id": body["id"], "result": {"message": message}}
            )

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


def _peers(url: str) -> dict[str, Any]:
    return {
        "billing": {
            "url": url,
            "spiffe_id": "spiffe://demo.example/agent/billing",
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
def hostile() -> Iterator[HostilePeer]:
    agent = HostilePeer()
    yield agent
    agent.stop()


@pytest.fixture
def testpol(start_jwt_sidecar, authority, peer, tmp_path) -> Outbound:
    """The test policy (allows lookup and unnamed skills, redacts e-mail both ways)."""
    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)}, a2a={"listen": "127.0.0.1:0"}, a2a_peers=_peers(peer.url)
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


@pytest.fixture
def baseline(start_jwt_sidecar, authority, peer) -> Outbound:
    running = start_jwt_sidecar(
        policy={"dir": str(ROOT / "rego")},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers=_peers(peer.url),
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


@pytest.fixture
def echoing(start_jwt_sidecar, authority, hostile, tmp_path) -> Outbound:
    """The test policy in front of the hostile peer, the inbound side on (Txn-Tokens)."""
    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)},
        a2a={"listen": "127.0.0.1:0"},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": "http://127.0.0.1:9",  # never reached
            "agent_id": AGENT,
        },
        a2a_peers=_peers(hostile.url),
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def test_review_a1_1_metadata_is_classified_by_the_baseline(baseline, peer):
    """An SSN in the message's or the params' metadata is a sensitive class: denied."""
    for where in ("message", "params"):
        body = _send("echo hi", skill="lookup")
        target = body["params"]["message"] if where == "message" else body["params"]
        target.setdefault("metadata", {})["note"] = f"customer ssn {SSN}"
        error = baseline.post(body).json()["error"]
        assert error["data"]["code"] == "policy_deny", where
    assert peer.seen == []
    records = baseline.records()
    assert [r["action"]["data_classes"] for r in records] == [["us_ssn"], ["us_ssn"]]


def test_review_a1_1_metadata_is_redacted_before_it_leaves(testpol, peer):
    body = _send("echo hi")
    body["params"]["metadata"] = {"note": AGENT_EMAIL}
    body["params"]["message"]["metadata"] = {"cc": AGENT_EMAIL}
    body["params"]["message"]["parts"].append({"data": {"id": AGENT_EMAIL}})
    assert "result" in testpol.post(body).json()
    sent = json.dumps(peer.seen[0].body)
    assert AGENT_EMAIL not in sent and sent.count("[REDACTED:email]") == 3


def test_review_s11_the_request_id_is_redacted_before_it_leaves(testpol, peer):
    """The JSON-RPC id is the agent's text the peer reads too: under ``redact`` it leaves
    redacted like the params, and the answer still comes back under the agent's own id."""
    body = _send("echo hi")
    body["id"] = f"req {AGENT_EMAIL}"
    answer = testpol.post(body).json()
    assert "result" in answer and answer["id"] == f"req {AGENT_EMAIL}"
    assert peer.seen[0].body["id"] == "req [REDACTED:email]"
    assert AGENT_EMAIL not in json.dumps(peer.seen[0].body)


def test_review_a1_3_a_secret_split_across_streamed_chunks_never_reaches_the_agent(testpol, peer):
    events = asyncio.run(_sdk_send(testpol, _request("split"), streaming=True))
    texts = [
        e.artifact_update.artifact.parts[0].text
        for e in events
        if e.HasField("artifact_update") and e.artifact_update.artifact.parts
    ]
    joined = "".join(texts)
    assert PEER_SECRET_EMAIL not in joined and joined == "mail [REDACTED:email], ok"
    half = len(PEER_SECRET_EMAIL) // 2
    assert not any(PEER_SECRET_EMAIL[:half] in t for t in texts)
    assert events[-1].WhichOneof("payload") == "status_update"
    [record] = testpol.records()
    assert record["outcome"]["code"] == "ok"
    assert PEER_SECRET_EMAIL not in json.dumps(record)


def test_review_a1_4_a_peer_echoing_the_txn_token_hands_it_to_no_one(echoing, hostile, authority):
    task_id = _task(echoing, authority)
    answer = echoing.post(_send("echo"), **{"X-Agent-Sidecar-Task": task_id})
    [sent] = hostile.headers
    txn_token = sent["txn-token"]
    assert txn_token and txn_token not in answer.text
    echoed = json.loads(answer.json()["result"]["message"]["parts"][0]["text"])
    assert echoed["txn-token"] == "[REDACTED:credential]"
    assert echoed["authorization"] == "Bearer [REDACTED:credential]"
    [record] = echoing.records()
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["credentials_scrubbed"] >= 2
    audit = Path(echoing.running.audit_path).read_text()
    assert txn_token not in audit and sent["authorization"].split()[-1] not in audit


def test_review_a1_5_an_alias_of_a_read_field_is_refused_before_the_peer(testpol, peer):
    body = _send("echo follow-up")
    body["params"]["message"]["taskId"] = "decoy-task"
    body["params"]["message"]["task_id"] = "victim-task"
    error = testpol.post(body).json()["error"]
    assert error["code"] == -32602 and error["data"]["code"] == "invalid_params"
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in testpol.records()] == ["malformed_request"]


def test_review_a1_6_an_empty_skill_beside_skill_id_does_not_skip_step_up(testpol, peer):
    body = _send("echo refund 100")
    body["params"]["message"]["metadata"] = {"skill": "", "skillId": "refund"}
    error = testpol.post(body).json()["error"]
    assert error["data"]["code"] == "invalid_params"
    assert peer.seen == []


def test_review_a1_7_a_push_url_is_policy_input_and_the_baseline_denies_an_unlisted_host(
    baseline, peer
):
    message = {
        "kind": "message",
        "role": "user",
        "messageId": "m03",
        "parts": [{"kind": "text", "text": "echo hi"}],
        "metadata": {"skillId": "lookup"},
    }
    url = "http://169.254.169.254/latest/meta-data/"
    config = {"pushNotificationConfig": {"url": url, "token": "t"}}
    body = {
        "jsonrpc": "2.0",
        "id": "a",
        "method": "message/send",
        "params": {"message": message, "configuration": config},
    }
    error = baseline.post(body).json()["error"]
    assert error["data"]["code"] == "policy_deny"
    # the host policy saw (arguments.push_url) is in the baseline's reason
    assert any("URL on host 169.254.169.254" in r for r in error["data"]["reasons"])
    assert peer.seen == []
    # "t-1": a task of this agent's at the peer (another agent's is refused first, s11 item 2)
    baseline.running.sidecar.a2a_outbound.peers["billing"].tasks.record(AGENT, {"task:t-1"})
    set_body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "CreateTaskPushNotificationConfig",
        "params": {"taskId": "t-1", "url": "https://hooks.elsewhere.example/x"},
    }
    error = baseline.post(set_body).json()["error"]
    assert any("URL on host hooks.elsewhere.example" in r for r in error["data"]["reasons"])
    assert peer.seen == []
    assert [r["outcome"]["code"] for r in baseline.records()] == ["policy_deny"] * 2


def test_review_a1_10_a_refused_extended_card_is_on_record_as_refused(echoing, hostile):
    body = {"jsonrpc": "2.0", "id": 4, "method": "GetExtendedAgentCard", "params": {}}
    answer = echoing.post(body).json()
    assert "result" not in answer
    code = answer["error"]["data"]["code"]
    assert code in ("peer_bad_response", "peer_card_unverified")
    [record] = echoing.records()
    assert record["outcome"]["code"] == code != "ok"
    assert record["input"]["action"]["a2a_operation"] == "extended_card"


def test_review_a1_11_the_card_route_attests_its_caller(testpol, peer):
    card_url = f"{testpol.url}/.well-known/agent-card.json"
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        refused = httpx.get(card_url, headers=headers, timeout=30)
        assert refused.status_code == 401
        assert "skills" not in refused.text and peer.url not in refused.text
    records = testpol.records()
    assert len(records) == 2 and all(r["outcome"]["code"] != "ok" for r in records)
    served = httpx.get(card_url, headers=testpol.headers(), timeout=30)
    assert served.status_code == 200 and served.json()["supportedInterfaces"][0]["url"] == (
        testpol.url
    )
    assert len(testpol.records()) == 2  # a served card is not a call
