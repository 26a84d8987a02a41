"""Issue 34, deliverable 3: the inbound A2A listener in front of a real a2a-sdk agent server.

Callers hold real SVIDs from the development CA and speak over real TLS; the agent is the
unmodified SDK's Starlette server on loopback; policy is a test policy (input.inbound)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.identity.dev_authority import DevAuthority
from tests.conftest import REGO, SIDECAR_AUDIENCE, audit_lines
from tests.support.a2a_inbound_agent import InboundAgent, card_dict
from tests.support.oauth_server import AuthorizationServer
from tests.support.policies import write_policy

AGENT = "spiffe://demo.example/agent/support"  # the agent behind the sidecar (jwt mode)
PLANNER = "spiffe://demo.example/agent/planner"
INTERN = "spiffe://demo.example/agent/intern"

POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

callers := {
	"spiffe://demo.example/agent/planner",
	"spiffe://demo.example/ns/agents/sa/support-sidecar",
	"user:corp/alice",
}

decision := {"effect": "allow", "obligations": {"log": "full"}} if {
	input.action.kind == "a2a_inbound"
	input.inbound.agent == "spiffe://demo.example/agent/support"
	input.inbound.caller.id in callers
	input.action.name == "refund"
}

decision := {"effect": "allow", "obligations": {"log": "full"}} if {
	input.action.kind == "tool"
	input.delegation.chain[0] == "spiffe://demo.example/agent/planner"
	input.delegation.origin.requester != ""
}
"""


def message(text: str, skill: str = "refund", method: str = "SendMessage") -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": method,
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": "m-1",
                "parts": [{"text": text}],
                "metadata": {"skill": skill},
            }
        },
    }


def client_tls(authority: DevAuthority, tmp_path: Path, spiffe_id: str | None) -> ssl.SSLContext:
    """A caller's TLS: trusts the sidecar's bundle; presents an X.509-SVID when given one."""
    context = ssl.create_default_context(cadata=authority.x509_bundle_pem.decode())
    context.check_hostname = False  # SPIFFE: identity is the URI SAN, not a host name
    if spiffe_id is not None:
        svid = authority.issue_x509(spiffe_id)
        name = spiffe_id.rsplit("/", 1)[-1]
        (tmp_path / f"{name}.crt").write_bytes(svid.chain_pem)
        (tmp_path / f"{name}.key").write_bytes(svid.key_pem)
        context.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return context


@pytest.fixture
def agent():
    with InboundAgent() as server:
        yield server


@pytest.fixture
def idp(tmp_path, authority):
    server = AuthorizationServer(tmp_path, spiffe=authority, clients={}).start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Sidecars whose transaction tokens the test listener accepts (a2a_inbound.txn_issuers): the
# provenance tests' sidecars a..d (a prefix for d's) and this sidecar; not the planner.
TXN_ISSUERS = [
    "spiffe://demo.example/agent/a",
    "spiffe://demo.example/agent/b",
    "spiffe://demo.example/agent/c",
    "spiffe://demo.example/agent/d/",
    "spiffe://demo.example/ns/agents/sa/support-sidecar",
]


@pytest.fixture
def inbound(start_jwt_sidecar, agent, idp, tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps(card_dict(agent.url)))
    port = free_port()
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        users={
            "issuers": {
                "corp": {
                    "issuer": idp.issuer,
                    "audiences": ["agent-app"],
                    "ca_file": str(idp.ca_file),
                }
            }
        },
        a2a_inbound={
            "listen": f"127.0.0.1:{port}",
            "url": f"https://127.0.0.1:{port}/",
            "agent_url": agent.url,
            "agent_id": AGENT,
            "card": str(card),
            "sign_card": True,
            "txn_issuers": TXN_ISSUERS,
            "users": {"issuer": "corp"},
            "timeout_s": 3,
            "max_message_bytes": 65536,
        },
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


def post(running, body, *, tls: ssl.SSLContext, headers: dict | None = None) -> httpx.Response:
    with httpx.Client(verify=tls, timeout=30) as http:
        return http.post(running.url, json=body, headers={"A2A-Version": "1.0"} | (headers or {}))


def records(path: Path, count: int = 1) -> list[dict]:
    """The call records once ``count`` are written: a streamed answer reaches the caller
    before its record is (the record holds how the stream ended)."""
    for _ in range(1000):
        found = audit_lines(path)
        if len(found) >= count:
            return found
        time.sleep(0.01)
    return audit_lines(path)


def seen_by_agent(response: httpx.Response) -> dict:
    return json.loads(response.json()["result"]["message"]["parts"][0]["text"])


def test_item3_an_mtls_caller_reaches_the_agent_with_its_verified_identity(
    inbound, agent, authority, tmp_path
):
    answer = post(inbound, message("refund order 7"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 200, answer.text
    seen = seen_by_agent(answer)
    assert seen["x-agent-sidecar-caller"] == PLANNER
    assert seen["x-agent-sidecar-caller-via"] == "mtls"
    assert seen["x-agent-sidecar-task"].startswith("t-")
    [record] = records(inbound.audit_path)
    assert record["action"]["kind"] == "a2a_inbound"
    assert record["outcome"]["code"] == "ok" and record["outcome"]["relayed"] is True
    assert record["input"]["inbound"] == {
        "agent": AGENT,
        "caller": {"kind": "workload", "id": PLANNER, "via": "mtls"},
        "skill": "refund",
        "a2a_operation": "send",
        "method": "SendMessage",
        "task_owner": "",
    }
    assert record["task"]["id"] == seen["x-agent-sidecar-task"]
    assert record["delegation"] == []  # the caller's delegators: none (it is the subject)


def test_item3_a_forged_caller_header_is_stripped_and_credentials_never_reach_the_agent(
    inbound, agent, authority, tmp_path
):
    token = authority.issue_jwt(PLANNER, [AGENT])
    forged = {
        "x-agent-sidecar-caller": "spiffe://demo.example/agent/admin",
        "X-Agent-Sidecar-Task": "t-forged",
        "Authorization": f"Bearer {token}",
    }
    answer = post(
        inbound, message("refund"), tls=client_tls(authority, tmp_path, None), headers=forged
    )
    assert answer.status_code == 200, answer.text
    seen = seen_by_agent(answer)
    assert seen["x-agent-sidecar-caller"] == PLANNER
    assert seen["x-agent-sidecar-caller-via"] == "jwt_svid"
    assert seen["x-agent-sidecar-task"] != "t-forged"
    assert seen["authorization"] == "" and seen["txn-token"] == ""


@pytest.mark.parametrize(
    "case", ["no credentials", "wrong trust domain", "expired", "wrong audience", "garbage"]
)
def test_item3_an_unverified_caller_gets_401_caller_unverified_and_one_audit_record(
    inbound, agent, authority, tmp_path, case
):
    headers = {}
    if case == "wrong trust domain":
        evil = DevAuthority("evil.example")
        headers["Authorization"] = "Bearer " + evil.issue_jwt("spiffe://evil.example/a", [AGENT])
    elif case == "expired":
        headers["Authorization"] = "Bearer " + authority.issue_jwt(PLANNER, [AGENT], ttl_s=-5)
    elif case == "wrong audience":
        headers["Authorization"] = "Bearer " + authority.issue_jwt(PLANNER, [SIDECAR_AUDIENCE])
    elif case == "garbage":
        headers["Authorization"] = "Bearer not.a.jwt" + "x" * 5000
    answer = post(
        inbound, message("refund"), tls=client_tls(authority, tmp_path, None), headers=headers
    )
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert error["data"]["code"] == "caller_unverified"
    assert error["data"]["decision_id"]
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "caller_unverified"
    assert record["decision_id"] == error["data"]["decision_id"]


def test_item3_a_certificate_from_another_ca_fails_the_handshake(
    inbound, agent, tmp_path, authority
):
    evil = DevAuthority("demo.example")  # same trust domain name, another CA
    tls = client_tls(authority, tmp_path, None)
    svid = evil.issue_x509(PLANNER)
    (tmp_path / "evil.crt").write_bytes(svid.chain_pem)
    (tmp_path / "evil.key").write_bytes(svid.key_pem)
    tls.load_cert_chain(tmp_path / "evil.crt", tmp_path / "evil.key")
    with pytest.raises(httpx.HTTPError):
        post(inbound, message("refund"), tls=tls)
    assert agent.seen == []


def test_item3_a_denied_skill_is_a_json_rpc_error_with_its_decision_id(
    inbound, agent, authority, tmp_path
):
    answer = post(
        inbound, message("look", skill="lookup"), tls=client_tls(authority, tmp_path, PLANNER)
    )
    error = answer.json()["error"]
    assert error["data"]["code"] == "inbound_denied"
    assert answer.json()["id"] == 7
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "inbound_denied"
    assert record["decision_id"] == error["data"]["decision_id"]
    # another caller, the right skill: denied too (the grant names the caller)
    answer = post(inbound, message("refund"), tls=client_tls(authority, tmp_path, INTERN))
    assert answer.json()["error"]["data"]["code"] == "inbound_denied"


def test_item3_a_user_token_caller_is_the_subject_and_input_user(
    inbound, agent, idp, authority, tmp_path
):
    token = idp.user_token("alice", audience="agent-app", groups=["finance"])
    answer = post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, None),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    seen = seen_by_agent(answer)
    assert seen["x-agent-sidecar-caller"] == "user:corp/alice"
    assert seen["x-agent-sidecar-caller-via"] == "user_token"
    [record] = records(inbound.audit_path)
    assert record["input"]["user"]["sub"] == "alice"
    assert record["input"]["inbound"]["caller"]["kind"] == "user"


def test_item3_a_streamed_answer_passes_through_as_sse(inbound, agent, authority, tmp_path):
    body = message("refund", method="SendStreamingMessage")
    tls = client_tls(authority, tmp_path, PLANNER)
    headers = {"A2A-Version": "1.0"}
    with (
        httpx.Client(verify=tls, timeout=30) as http,
        http.stream("POST", inbound.url, json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line.startswith("data:")]
    assert events
    first = json.loads(events[0].removeprefix("data:"))
    assert PLANNER in json.dumps(first)
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "ok"


def test_item3_an_agent_that_hangs_ends_in_agent_timeout(inbound, agent, authority, tmp_path):
    answer = post(inbound, message("hang"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 504
    assert answer.json()["error"]["data"]["code"] == "agent_timeout"
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "agent_timeout"


def test_item3_a_huge_message_is_refused_before_policy(inbound, agent, authority, tmp_path):
    answer = post(inbound, message("x" * 100_000), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 413
    assert answer.json()["error"]["data"]["code"] == "message_too_large"
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "message_too_large"


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"jsonrpc":"2.0","id":1,"method":"Nope"}'])
def test_item3_a_malformed_request_is_refused_and_audited(
    inbound, agent, authority, tmp_path, body
):
    with httpx.Client(verify=client_tls(authority, tmp_path, PLANNER), timeout=30) as http:
        answer = http.post(inbound.url, content=body, headers={"Content-Type": "application/json"})
    assert "error" in answer.json()
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "malformed_request"


def test_item3_the_card_points_at_the_listener_and_is_signed_by_the_svid(
    inbound, authority, tmp_path
):
    from sidecar.a2a.card_signature import verify_card
    from sidecar.a2a.errors import CardSignatureError
    from tests.conftest import SIDECAR_ID

    with httpx.Client(verify=client_tls(authority, tmp_path, None), timeout=30) as http:
        card = http.get(inbound.url + ".well-known/agent-card.json").json()
    assert [i["url"] for i in card["supportedInterfaces"]] == [inbound.url]
    verified = verify_card(
        card, keys={}, spiffe_id=SIDECAR_ID, bundles={"demo.example": (authority.ca_cert,)}
    )
    assert verified.signer == SIDECAR_ID
    card["description"] = "tampered"
    with pytest.raises(CardSignatureError):
        verify_card(
            card, keys={}, spiffe_id=SIDECAR_ID, bundles={"demo.example": (authority.ca_cert,)}
        )


def test_item4_an_outbound_call_under_the_inbound_task_carries_the_chain(
    inbound, agent, authority, tmp_path, tools
):
    answer = post(inbound, message("refund order 7"), tls=client_tls(authority, tmp_path, PLANNER))
    task_id = seen_by_agent(answer)["x-agent-sidecar-task"]
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    with inbound.client(jwt_svid=lambda: token) as client:
        result = client.call_tool("tickets.get", {"id": "1"}, task_id=task_id)
    assert result.status == 200
    _, record = records(inbound.audit_path, 2)
    assert record["delegation"] == [PLANNER]
    assert record["input"]["delegation"]["chain"] == [PLANNER]
    origin = record["input"]["delegation"]["origin"]
    assert origin["requester"] == PLANNER and origin["txn"].startswith("txn-")
    assert origin["purpose"] == "refund: refund order 7"
    assert record["task"]["origin"] == origin
    schema = json.loads((REGO / "schemas" / "input.v1.json").read_text())
    jsonschema.validate(record["input"], schema)  # delegation.origin is in the contract
    # without the task, the same call has no chain: policy denies it
    with (
        inbound.client(jwt_svid=lambda: token) as client,
        pytest.raises(Exception, match="not granted"),
    ):
        client.call_tool("tickets.get", {"id": "1"})


def test_item4_an_explicit_chain_that_differs_from_the_task_chain_is_refused(
    inbound, agent, authority, tmp_path, tools
):
    from sidecar.identity.delegation import delegation_audience

    answer = post(inbound, message("refund"), tls=client_tls(authority, tmp_path, PLANNER))
    task_id = seen_by_agent(answer)["x-agent-sidecar-task"]
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    link = authority.issue_jwt(INTERN, [delegation_audience(AGENT)])
    with (
        inbound.client(jwt_svid=lambda: token) as client,
        pytest.raises(Exception, match="differs"),
    ):
        client.call_tool("tickets.get", {"id": "1"}, task_id=task_id, delegation_chain=[link])
    record = records(inbound.audit_path, 2)[-1]
    assert record["outcome"]["code"] == "delegation_invalid"


def test_item3_the_listener_serves_the_rotated_svid(
    start_sidecar, tools, authority, agent, tmp_path
):
    from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
    from tests.conftest import SIDECAR_ID

    api = DevWorkloadApi(authority, SIDECAR_ID)
    server = DevWorkloadApiServer(api, tmp_path / "wl-rot.sock").start()
    try:
        running = start_sidecar(
            tools.url,
            identity={
                "mode": "jwt",
                "socket": f"unix://{server.socket_path}",
                "audience": SIDECAR_AUDIENCE,
            },
            policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
            a2a_inbound={"listen": "127.0.0.1:0", "agent_url": agent.url, "agent_id": AGENT},
        )
        assert running.sidecar.identity.wait_ready(10)
        running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
        tls = client_tls(authority, tmp_path, PLANNER)

        def served() -> bytes:
            address = ("127.0.0.1", running.sidecar.a2a_inbound.port)
            with socket.create_connection(address) as raw, tls.wrap_socket(raw) as wrapped:
                return wrapped.getpeercert(binary_form=True)

        before = served()
        api.rotate()
        for _ in range(1000):  # the rotated SVID reaches new handshakes
            if served() != before:
                break
            time.sleep(0.01)
        assert served() == api.svid.leaf.public_bytes(serialization.Encoding.DER)
        tls = client_tls(authority, tmp_path, PLANNER)  # the rotated authority's bundle
        assert post(running, message("refund"), tls=tls).status_code == 200
    finally:
        server.stop()


def test_item3_the_inbound_inputs_match_the_input_schema(inbound, agent, idp, authority, tmp_path):
    schema = json.loads((REGO / "schemas" / "input.v1.json").read_text())
    post(inbound, message("refund"), tls=client_tls(authority, tmp_path, PLANNER))
    token = idp.user_token("alice", audience="agent-app")
    post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, None),
        headers={"Authorization": f"Bearer {token}"},
    )
    for record in records(inbound.audit_path, 2):
        jsonschema.validate(record["input"], schema)


def test_item3_the_agent_defaults_to_the_sidecars_own_spiffe_id(
    start_jwt_sidecar, agent, authority, tmp_path
):
    from tests.conftest import SIDECAR_ID

    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": agent.url},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    tls = client_tls(authority, tmp_path, None)
    for audience, status in ((AGENT, 401), (SIDECAR_ID, 200)):
        bearer = {"Authorization": "Bearer " + authority.issue_jwt(PLANNER, [audience])}
        answer = post(running, message("refund"), tls=tls, headers=bearer)
        assert answer.status_code == status
    refused, decided = records(running.audit_path, 2)
    assert refused["outcome"]["code"] == "caller_unverified"
    assert decided["action"]["inbound"]["agent"] == SIDECAR_ID
    assert decided["outcome"]["code"] == "inbound_denied"  # the test policy names AGENT
