"""Issue 34, deliverable 4: transaction tokens between sidecars, verified and only narrowed,
and a transaction ended at its origin refusing every later hop (shared PostgreSQL)."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import jwt
import pytest

from sidecar.a2a.provenance import ProvenanceBinder
from sidecar.a2a.txn_token import TXN_HEADER, TxnTokenError, mint, verify
from sidecar.identity import WorkloadIdentity
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.identity.workload import Snapshot
from sidecar.state import open_state
from sidecar.tasks import TaskRegistry
from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_ID
from tests.integration.test_a2a_inbound import (
    AGENT,
    PLANNER,
    POLICY,
    client_tls,
    message,
    post,
    records,
    seen_by_agent,
)
from tests.integration.test_a2a_inbound import agent as agent
from tests.integration.test_a2a_inbound import idp as idp
from tests.integration.test_a2a_inbound import inbound as inbound
from tests.support.policies import write_policy

A = "spiffe://demo.example/agent/a"
B = "spiffe://demo.example/agent/b"
C = "spiffe://demo.example/agent/c"
USER = "user:corp/alice"


def snapshot(authority: DevAuthority, spiffe_id: str) -> Snapshot:
    svid = authority.issue_x509(spiffe_id)
    return Snapshot(spiffe_id, (svid.leaf,), svid.key, {"demo.example": (authority.ca_cert,)})


def check(token: str, authority: DevAuthority, caller: str, **kwargs):
    """Verified as a sidecar trusting every sidecar of the trust domain would."""
    return verify(
        token,
        bundles={"demo.example": (authority.ca_cert,)},
        trust_domains=("demo.example",),
        caller=caller,
        **({"max_depth": 8, "issuers": ["spiffe://demo.example/"]} | kwargs),
    )


def first(authority: DevAuthority, **kwargs) -> str:
    fields = {
        "txn": "txn-1",
        "requester": USER,
        "purpose": "refund order 7",
        "chain": [USER],
        "ttl_s": 60,
        "audience": "spiffe://demo.example",
    }
    return mint(snapshot(authority, A), **(fields | kwargs))


def test_item5_a_token_is_minted_verified_and_narrowed_hop_by_hop(authority):
    at_b = check(first(authority), authority, caller=A)
    assert (at_b.txn, at_b.requester, at_b.chain, at_b.depth) == ("txn-1", USER, (USER,), 1)
    onward = mint(
        snapshot(authority, B),
        txn=at_b.txn,
        requester=at_b.requester,
        purpose=at_b.purpose,
        chain=[*at_b.chain, A],
        ttl_s=600,
        audience="spiffe://demo.example",
        prev=at_b,
    )
    at_c = check(onward, authority, caller=B)
    assert at_c.chain == (USER, A) and at_c.depth == 2
    assert at_c.exp <= at_b.exp  # asked for 600 s: never later than what it came from
    header = jwt.get_unverified_header(onward)
    assert header["typ"] == "txntoken+jwt" and header["x5c"]


def _onward(authority, prev, **changes):
    fields = {
        "txn": prev.txn,
        "requester": prev.requester,
        "purpose": prev.purpose,
        "chain": [*prev.chain, A],
        "ttl_s": 60,
        "audience": "spiffe://demo.example",
        "prev": prev,
    }
    return mint(snapshot(authority, B), **(fields | changes))


@pytest.mark.parametrize(
    "case",
    [
        "widened chain",
        "dropped link",
        "other requester",
        "other txn",
        "other purpose",
        "tampered",
        "expired",
        "wrong presenter",
        "foreign ca",
        "wrong audience",
        "not a jws",
        "alg none",
    ],
)
def test_item5_a_widened_tampered_or_expired_token_is_refused(authority, case):
    prev = check(first(authority), authority, caller=A)
    caller = B
    if case == "widened chain":
        token = _onward(authority, prev, chain=[USER, "spiffe://demo.example/agent/root", A])
    elif case == "dropped link":
        token = _onward(authority, prev, chain=[A])
    elif case == "other requester":
        token = _onward(authority, prev, requester="user:corp/mallory")
    elif case == "other txn":
        token = _onward(authority, prev, txn="txn-2")
    elif case == "other purpose":
        token = _onward(authority, prev, purpose="wire everything")
    elif case == "tampered":
        head, body, sig = _onward(authority, prev).split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims["azd"]["chain"] = [A]
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        token = f"{head}.{body}.{sig}"
    elif case == "expired":
        token = first(authority, ttl_s=-60)
        caller = A
    elif case == "wrong presenter":
        token, caller = first(authority), C
    elif case == "foreign ca":
        token, caller = first(DevAuthority("demo.example")), A
    elif case == "wrong audience":
        token, caller = first(authority, audience="spiffe://other.example"), A
    elif case == "not a jws":
        token = "x" * 70_000
    else:
        token = jwt.encode({"txn": "t", "sub": USER}, None, algorithm="none")
    with pytest.raises(TxnTokenError) as caught:
        check(token, authority, caller=caller)
    assert caught.value.code == "txn_token_invalid"


def test_item5_a_token_outliving_its_origin_is_refused(authority):
    prev = check(first(authority, ttl_s=30), authority, caller=A)
    # a sidecar that ignores narrowing: exp later than the token it came from
    claims_exp = int(time.time()) + 3600
    svid = snapshot(authority, B)
    forged = mint(
        svid,
        txn=prev.txn,
        requester=prev.requester,
        purpose=prev.purpose,
        chain=[*prev.chain, A],
        ttl_s=3600,
        audience="spiffe://demo.example",
    )
    raw = jwt.decode(forged, options={"verify_signature": False})
    raw["prev"], raw["exp"] = prev.token, claims_exp
    widened = jwt.encode(
        raw,
        svid.private_key,
        algorithm="ES256",
        headers={"typ": "txntoken+jwt", "x5c": jwt.get_unverified_header(forged)["x5c"]},
    )
    with pytest.raises(TxnTokenError, match="outlives"):
        check(widened, authority, caller=B)


def test_item5_an_invalid_token_at_the_listener_is_401_txn_token_invalid(
    inbound, agent, authority, tmp_path
):
    token = first(authority, requester=A, chain=[])  # minted by A, presented by the planner
    answer = post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, PLANNER),
        headers={TXN_HEADER: token},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["data"]["code"] == "txn_token_invalid"
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "txn_token_invalid"
    assert token not in json.dumps(record)


@pytest.fixture
def origin(authority, tmp_path):
    """The first sidecar (A = the planner's): its own Workload API and SVID."""
    api = DevWorkloadApiServer(DevWorkloadApi(authority, PLANNER), tmp_path / "wl-a.sock").start()
    identity = WorkloadIdentity(f"unix://{api.socket_path}")
    assert identity.wait_ready(10)
    yield identity
    identity.close()
    api.stop()


def test_item5_a_transaction_ended_at_its_origin_refuses_every_later_hop(
    start_jwt_sidecar, agent, authority, tmp_path, pg_state, origin, tools
):
    b = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        state=pg_state,
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": agent.url,
            "agent_id": AGENT,
            "timeout_s": 5,
            "txn_issuers": [PLANNER],  # sidecar A's SVID (the origin fixture)
        },
    )
    b.url = f"https://127.0.0.1:{b.sidecar.a2a_inbound.port}/"
    # Sidecar A: another replica of the fleet state (the same PostgreSQL database).
    store_a = open_state(b.settings.state)
    tasks_a = TaskRegistry(store_a, b.settings.tasks)
    binder_a = ProvenanceBinder(
        tasks_a,
        origin,
        agent_id=PLANNER,
        trust_domains=(),
        task_ttl_s=0,
        token_ttl_s=300,
        max_links=8,
    )
    try:
        task_a = tasks_a.start(PLANNER, "refund order 7")
        headers = binder_a.outbound_headers(task_a)
        tls = client_tls(authority, tmp_path, PLANNER)
        answer = post(b, message("refund order 7"), tls=tls, headers=headers)
        assert answer.status_code == 200, answer.text
        task_b = seen_by_agent(answer)["x-agent-sidecar-task"]
        again = post(b, message("refund order 7"), tls=tls, headers=headers)
        assert seen_by_agent(again)["x-agent-sidecar-task"] == task_b  # joined, not new
        first_record = records(b.audit_path, 2)[0]
        txn = first_record["task"]["origin"]["txn"]
        assert first_record["task"]["origin"]["requester"] == PLANNER

        # B's agent calls C under its task: the token B mints carries the chain, narrowed.
        onward = b.sidecar.a2a_inbound.provenance.outbound_headers(task_b)[TXN_HEADER]
        at_c = check(onward, authority, caller=SIDECAR_ID)
        assert (at_c.txn, at_c.requester, at_c.chain, at_c.depth) == (txn, PLANNER, (PLANNER,), 2)

        tasks_a.end(task_a.id, PLANNER)  # the origin ends the transaction

        refused = post(b, message("refund order 7"), tls=tls, headers=headers)
        assert refused.json()["error"]["data"]["code"] == "txn_ended"
        token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
        with b.client(jwt_svid=lambda: token) as client, pytest.raises(Exception, match="ended"):
            client.call_tool("tickets.get", {"id": "1"}, task_id=task_b)
        with pytest.raises(Exception, match="ended"):
            b.sidecar.a2a_inbound.provenance.outbound_headers(task_b)
        codes = [r["outcome"]["code"] for r in records(b.audit_path, 5)]
        assert codes[-2:] == ["txn_ended", "task_ended"]
    finally:
        store_a.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_item5_without_a_shared_store_a_later_hop_asks_the_origin_and_is_refused_once_ended(
    start_jwt_sidecar, agent, authority, tmp_path, tools
):
    policy = str(write_policy(tmp_path / "policy", POLICY))
    port = free_port()
    origin_url = f"https://127.0.0.1:{port}/"
    o = start_jwt_sidecar(
        policy={"dir": policy},
        a2a_inbound={
            "listen": f"127.0.0.1:{port}",
            "url": origin_url,
            "agent_url": agent.url,
            "agent_id": AGENT,
        },
    )
    o.url = origin_url
    h = start_jwt_sidecar(  # the next hop: its own state, audit and sockets
        policy={"dir": policy},
        server={"listen": [f"unix://{tmp_path}/h-agent.sock"]},
        audit={"path": str(tmp_path / "h-audit.log")},
        state={"dir": str(tmp_path / "h-state")},
        approvals={"listen": f"unix://{tmp_path}/h-approvals.sock"},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": agent.url,
            "agent_id": AGENT,
            "txn_issuers": [SIDECAR_ID],
            "txn_status_hosts": [f"127.0.0.1:{port}"],
            "txn_status_cache_s": 0,  # every call asks (test_review_a3 proves the cache)
        },
    )
    h.url = f"https://127.0.0.1:{h.sidecar.a2a_inbound.port}/"
    # The planner asks O's agent; O's agent asks H's agent under that task.
    answer = post(o, message("refund order 7"), tls=client_tls(authority, tmp_path, PLANNER))
    task_o = seen_by_agent(answer)["x-agent-sidecar-task"]
    headers = o.sidecar.a2a_inbound.provenance.outbound_headers(task_o)
    claims = jwt.decode(headers[TXN_HEADER], options={"verify_signature": False})
    assert claims["rctx"]["status"].startswith(origin_url + ".well-known/agent-sidecar/txn/txn-")
    as_o = client_tls(authority, tmp_path, SIDECAR_ID)  # O's sidecar presents its token
    answer = post(h, message("refund order 7"), tls=as_o, headers=headers)
    assert answer.status_code == 200, answer.text
    [at_h] = records(h.audit_path)
    assert at_h["delegation"] == [PLANNER]  # the caller (O's sidecar) is the subject
    assert at_h["task"]["origin"]["requester"] == PLANNER
    task_h = seen_by_agent(answer)["x-agent-sidecar-task"]
    with h.client(jwt_svid=lambda: authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])) as client:
        assert client.call_tool("tickets.get", {"id": "1"}, task_id=task_h).status == 200
    tool_call = records(h.audit_path, 2)[-1]
    assert tool_call["delegation"] == [PLANNER, SIDECAR_ID]

    with o.client(jwt_svid=lambda: authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])) as client:
        client.end_task(task_o)

    refused = post(h, message("refund order 7"), tls=as_o, headers=headers)
    error = refused.json()["error"]["data"]
    assert error["code"] == "txn_ended"
    assert records(h.audit_path, 3)[-1]["outcome"]["code"] == "txn_ended"


def test_item5_an_origin_that_cannot_be_asked_refuses_the_hop(inbound, agent, authority, tmp_path):
    gone = f"https://127.0.0.1:{free_port()}/.well-known/agent-sidecar/txn/txn-1"
    token = mint(  # a sidecar the policy lets call: the origin is asked only after allow
        snapshot(authority, SIDECAR_ID),
        txn="txn-1",
        requester=AGENT,
        purpose="refund",
        chain=[],
        ttl_s=60,
        audience="spiffe://demo.example",
        status_url=gone,
    )
    answer = post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, SIDECAR_ID),
        headers={TXN_HEADER: token},
    )
    assert answer.json()["error"]["data"]["code"] == "txn_ended"
    assert agent.seen == []


def test_item5_a_token_five_sidecars_deep_passes_the_listener_with_its_whole_chain(
    inbound, agent, authority, tmp_path
):
    signers = [A, B, C, "spiffe://demo.example/agent/d/1", SIDECAR_ID]
    prev, chain = None, [USER]
    for signer in signers:
        token = mint(
            snapshot(authority, signer),
            txn="txn-deep",
            requester=USER,
            purpose="refund order 7",
            chain=chain,
            ttl_s=60,
            audience="spiffe://demo.example",
            prev=prev,
        )
        prev = check(token, authority, caller=signer)
        chain = [*chain, signer]
    assert prev.depth == 5 and len(token) > 8190  # beyond a default HTTP header field
    answer = post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, SIDECAR_ID),
        headers={TXN_HEADER: token},
    )
    assert answer.status_code == 200, answer.text
    [record] = records(inbound.audit_path)
    assert record["delegation"] == [USER, A, B, C, "spiffe://demo.example/agent/d/1"]
    assert record["subject"]["spiffe_id"] == SIDECAR_ID
    assert record["task"]["origin"] == {
        "txn": "txn-deep",
        "requester": USER,
        "purpose": "refund order 7",
    }


def test_item5_two_txn_tokens_are_refused(inbound, agent, authority, tmp_path):
    tls = client_tls(authority, tmp_path, A)
    token = first(authority, requester=A, chain=[])
    with httpx.Client(verify=tls, timeout=30) as http:
        answer = http.post(
            inbound.url,
            json=message("refund"),
            headers=[(TXN_HEADER, token), (TXN_HEADER, token), ("A2A-Version", "1.0")],
        )
    assert answer.json()["error"]["data"]["code"] == "txn_token_invalid"
    assert agent.seen == []


def test_item5_the_origin_status_endpoint_answers_verified_workloads_only(
    inbound, agent, authority, tmp_path
):
    answer = post(inbound, message("refund order 7"), tls=client_tls(authority, tmp_path, PLANNER))
    task = seen_by_agent(answer)["x-agent-sidecar-task"]
    txn = records(inbound.audit_path)[0]["task"]["origin"]["txn"]
    base = inbound.url + ".well-known/agent-sidecar/txn/"
    with httpx.Client(verify=client_tls(authority, tmp_path, None), timeout=30) as anonymous:
        assert anonymous.get(base + txn).status_code == 401
    with httpx.Client(verify=client_tls(authority, tmp_path, C), timeout=30) as peer:
        assert peer.get(base + txn).json() == {"txn": txn, "state": "active"}
        assert peer.get(base + "txn-0000").json()["state"] == "unknown"
        assert peer.get(base + "txn-..%2Fx").json()["state"] == "unknown"
        with inbound.client(jwt_svid=lambda: authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])) as c:
            c.end_task(task)
        assert peer.get(base + txn).json()["state"] == "ended"
