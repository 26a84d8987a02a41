"""Review of issue 34 deliverable 3 (the inbound A2A listener): task ownership, the signed
card's URL, the skill, forged header spellings, header bounds; one regression test per
finding against the real listener (TLS, real SVIDs, the unmodified a2a-sdk agent), with the
hostile variants the probes used. Transaction-token findings: test_review_a3_tokens.py."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid

import httpx
import pytest

from sidecar.a2a_inbound_settings import InboundSettings
from tests.conftest import audit_lines
from tests.integration.test_a2a_inbound import (
    AGENT,
    PLANNER,
    client_tls,
    message,
    post,
    records,
    seen_by_agent,
)
from tests.integration.test_a2a_inbound import agent as agent
from tests.integration.test_a2a_inbound import idp as idp
from tests.integration.test_a2a_inbound import inbound as inbound
from tests.integration.test_a2a_provenance import A
from tests.support.policies import write_policy

INTERN = "spiffe://demo.example/agent/intern"
CEO = "user:corp/ceo"

# Planner and intern may do anything inbound: only task ownership separates them.
OPEN_POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow", "obligations": {"log": "full"}} if {
	input.action.kind == "a2a_inbound"
	input.inbound.caller.id in {
		"spiffe://demo.example/agent/planner",
		"spiffe://demo.example/agent/intern",
		"spiffe://demo.example/agent/a",
		"spiffe://demo.example/ns/agents/sa/support-sidecar",
	}
	input.inbound.skill != "lookup"
}
"""


@pytest.fixture
def open_inbound(start_jwt_sidecar, agent, tmp_path):
    """A listener with OPEN_POLICY, transaction tokens from a only."""
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "open-policy", OPEN_POLICY))},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": agent.url,
            "agent_id": AGENT,
            "txn_issuers": [A],
        },
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


# --- 2: a caller's tasks are its own ----------------------------------------------------------


def rpc(method: str, params: dict, rpc_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def send(text: str, **message_fields) -> dict:
    return rpc(
        "SendMessage",
        {
            "message": {
                "role": "ROLE_USER",
                # Not digits: a 13-19 digit id starting 2-6 passes Luhn one time in ten (a card).
                "messageId": f"m-{uuid.uuid4().hex}",
                "parts": [{"text": text}],
                "metadata": {"skill": "refund"},
            }
            | message_fields
        },
    )


def error_code(answer: httpx.Response) -> str:
    return answer.json()["error"]["data"]["code"]


def test_review_a3_2_another_callers_task_cannot_be_read_cancelled_continued_or_listed(
    open_inbound, agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    intern = client_tls(authority, tmp_path, INTERN)
    made = post(open_inbound, send("task refund order 7"), tls=planner)
    task = made.json()["result"]["task"]
    task_id, context_id = task["id"], task["contextId"]

    own = post(open_inbound, rpc("GetTask", {"id": task_id}), tls=planner)
    assert own.json()["result"]["id"] == task_id
    for request in (
        rpc("GetTask", {"id": task_id}),
        rpc("CancelTask", {"id": task_id}),
        rpc("SubscribeToTask", {"id": task_id}),
        rpc("GetTask", {"id": "no-such-task"}),
        send("task more", taskId=task_id),
        send("task more", contextId=context_id),
    ):
        refused = post(open_inbound, request, tls=intern)
        assert error_code(refused) == "task_not_owned", refused.text
        assert refused.json()["error"]["code"] == -32001  # A2A TaskNotFound
        assert PLANNER not in refused.text and "IBAN" not in refused.text
    listed = post(open_inbound, rpc("ListTasks", {}), tls=intern)
    assert error_code(listed) == "list_tasks_refused"
    assert listed.json()["error"]["code"] == -32004

    found = records(open_inbound.audit_path, 9)
    assert found[1]["input"]["inbound"]["task_owner"] == PLANNER  # the planner's own GetTask
    assert [r["outcome"]["code"] for r in found[2:9]] == ["task_not_owned"] * 6 + [
        "list_tasks_refused"
    ]
    assert agent.seen and all(s["x-agent-sidecar-caller"] == PLANNER for s in agent.seen)


def test_review_a3_2_tasks_created_by_a_streamed_answer_are_recorded_before_it_is_seen(
    open_inbound, agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    intern = client_tls(authority, tmp_path, INTERN)
    body = send("task stream me")
    body["method"] = "SendStreamingMessage"
    version = {"A2A-Version": "1.0"}
    with (
        httpx.Client(verify=planner, timeout=30) as http,
        http.stream("POST", open_inbound.url, json=body, headers=version) as s,
    ):
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    task_id = next(e["result"]["task"]["id"] for e in events if "task" in e["result"])
    assert post(open_inbound, rpc("GetTask", {"id": task_id}), tls=planner).json()["result"]
    assert error_code(post(open_inbound, rpc("GetTask", {"id": task_id}), tls=intern)) == (
        "task_not_owned"
    )


# --- 3: the signed card's URL ------------------------------------------------------------------


def test_review_a3_3_sign_card_without_url_is_a_configuration_error(tmp_path):
    card = tmp_path / "card.json"
    card.write_text("{}")
    base = {"listen": "127.0.0.1:0", "agent_url": "http://127.0.0.1:9999", "card": card}
    with pytest.raises(ValueError, match="sign_card: requires url"):
        InboundSettings(**base, sign_card=True)
    assert InboundSettings(**base, sign_card=True, url="https://support.example:8443/").sign_card


def test_review_a3_3_the_signed_card_never_takes_its_url_from_the_host_header(
    inbound, authority, tmp_path
):
    with httpx.Client(verify=client_tls(authority, tmp_path, None), timeout=30) as http:
        card = http.get(
            inbound.url + ".well-known/agent-card.json",
            headers={"Host": "attacker.example:443"},
        ).json()
    urls = [i["url"] for i in card["supportedInterfaces"]]
    assert urls == [inbound.url] and card["signatures"]
    assert "attacker" not in json.dumps(card)


# --- 4: one skill for policy and the agent ---------------------------------------------------


@pytest.mark.parametrize(
    "metadata", [{"skill": "lookup"}, {"skillId": "lookup"}, {"skill_id": "lookup"}, {"skill": 1}]
)
def test_review_a3_4_params_metadata_naming_another_skill_is_refused(
    inbound, agent, authority, tmp_path, metadata
):
    body = message("refund order 7")  # message.metadata.skill: refund (allowed)
    body["params"]["metadata"] = metadata
    answer = post(inbound, body, tls=client_tls(authority, tmp_path, PLANNER))
    assert error_code(answer) == "skill_mismatch"
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "skill_mismatch"


def test_review_a3_4_the_agent_receives_the_decided_skill(inbound, agent, authority, tmp_path):
    body = message("refund order 7")
    body["params"]["metadata"] = {"skill": "refund", "note": "same skill: fine"}
    answer = post(inbound, body, tls=client_tls(authority, tmp_path, PLANNER))
    assert seen_by_agent(answer)["x-agent-sidecar-skill"] == "refund"


# --- 8: forged sidecar headers in every spelling ---------------------------------------------


def test_review_a3_8_forged_headers_with_underscores_or_any_case_never_reach_the_agent(
    inbound, agent, authority, tmp_path
):
    forged = {
        "x-agent-sidecar_caller": "spiffe://demo.example/agent/admin",
        "x_agent_sidecar_task": "t-forged",
        "X_AGENT_SIDECAR_SKILL": "wire",
        "X-Agent-SIDECAR-Caller-Via": "mtls",
        "x-agent-sidecar-Decision_Id": "d-forged",
        "txn_token": "forged",
        "TXN-TOKEN_": "kept: not a Txn-Token",
    }
    answer = post(
        inbound, message("refund"), tls=client_tls(authority, tmp_path, PLANNER), headers=forged
    )
    seen = seen_by_agent(answer)
    assert seen.pop("authorization") == "" and seen.pop("txn-token") == ""
    assert seen.pop("txn-token_") == "kept: not a Txn-Token"  # only exact names are dropped
    assert sorted(seen) == [
        "x-agent-sidecar-caller",
        "x-agent-sidecar-caller-kind",
        "x-agent-sidecar-caller-via",
        "x-agent-sidecar-decision-id",
        "x-agent-sidecar-skill",
        "x-agent-sidecar-task",
    ]
    assert seen["x-agent-sidecar-caller"] == PLANNER and seen["x-agent-sidecar-skill"] == "refund"
    assert "forged" not in json.dumps(seen) and "admin" not in json.dumps(seen)


# --- 9: bounded headers before the caller is verified ----------------------------------------


def raw_request(port: int, tls, headers: list[tuple[str, str]]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    request = f"POST / HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 2\r\n\r\n{{}}".encode()
    with socket.create_connection(("127.0.0.1", port)) as raw, tls.wrap_socket(raw) as wrapped:
        with contextlib.suppress(OSError):  # the listener may close before reading all
            wrapped.sendall(request)
        return wrapped.recv(64)


@pytest.mark.parametrize("case", ["many headers", "one header beyond a token"])
def test_review_a3_9_oversized_headers_are_refused_before_the_caller_is_verified(
    inbound, authority, tmp_path, case
):
    if case == "many headers":
        headers = [(f"x-pad-{i}", "a" * 1000) for i in range(40)]
    else:
        headers = [("x-pad", "a" * 56 * 1024)]
    answer = raw_request(
        inbound.sidecar.a2a_inbound.port, client_tls(authority, tmp_path, None), headers
    )
    assert answer.split(b" ")[1] in (b"400", b"431"), answer
    assert audit_lines(inbound.audit_path) == []  # refused by the HTTP parser, not a call
