"""Review of issue 34 deliverable 4 (transaction tokens): who may mint one, what its claims
may be, the origin status URL, the chain bound, the provenance insert race. Against the
real verifier and the real listener (TLS, real SVIDs, the unmodified a2a-sdk agent)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.a2a.provenance import ProvenanceBinder
from sidecar.a2a.txn_token import TXN_HEADER, TxnTokenError, mint
from sidecar.state import StateSettings, open_state
from sidecar.tasks import TaskRegistry
from sidecar.tasks_settings import TaskSettings
from tests.conftest import SIDECAR_ID
from tests.integration.test_a2a_inbound import (
    AGENT,
    PLANNER,
    client_tls,
    free_port,
    message,
    post,
    records,
)
from tests.integration.test_a2a_inbound import agent as agent
from tests.integration.test_a2a_inbound import idp as idp
from tests.integration.test_a2a_inbound import inbound as inbound
from tests.integration.test_a2a_provenance import USER, A, B, check, first, snapshot
from tests.integration.test_review_a3 import CEO, OPEN_POLICY, error_code
from tests.integration.test_review_a3 import open_inbound as open_inbound
from tests.support.policies import write_policy


def signed(authority, spiffe_id: str, claims: dict, headers: dict | None = None) -> str:
    """A token signed with ``spiffe_id``'s real SVID, with exactly ``claims``."""
    svid = authority.issue_x509(spiffe_id)
    x5c = [base64.b64encode(svid.leaf.public_bytes(serialization.Encoding.DER)).decode()]
    header = {"typ": "txntoken+jwt", "x5c": x5c} | (headers or {})
    return jwt.encode(claims, svid.key, algorithm="ES256", headers=header)


def root_claims(signer: str, **changes) -> dict:
    now = int(time.time())
    return {
        "txn": "txn-1",
        "sub": signer,
        "purp": "refund",
        "azd": {"chain": []},
        "rctx": {"req_wl": signer},
        "iat": now,
        "exp": now + 60,
        "aud": "spiffe://demo.example",
    } | changes


# --- 1: who may mint a root transaction token -----------------------------------------------


def test_review_a3_1_a_root_token_from_a_sidecar_not_in_txn_issuers_is_refused(
    inbound, agent, authority, tmp_path
):
    forged = mint(  # the planner's own SVID, naming the CEO: the probe's forgery
        snapshot(authority, PLANNER),
        txn="txn-anything",
        requester=CEO,
        purpose="approved by the CEO",
        chain=[CEO],
        ttl_s=300,
        audience="spiffe://demo.example",
    )
    answer = post(
        inbound,
        message("refund order 7"),
        tls=client_tls(authority, tmp_path, PLANNER),
        headers={TXN_HEADER: forged},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["data"]["code"] == "txn_token_invalid"
    assert "txn_issuers" in answer.json()["error"]["message"]
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "txn_token_invalid" and forged not in json.dumps(record)


@pytest.mark.parametrize(
    "case",
    [
        "root chain of others",
        "root chain not its sub",
        "user root without chain",
        "group in chain",
        "wildcard sub",
        "bad txn",
        "non-issuer narrows",
        "no issuers configured",
    ],
)
def test_review_a3_1_a_root_token_must_start_its_own_chain_and_name_identities(authority, case):
    issuers = [A, B]
    token = first(authority)  # a valid root: chain [USER], sub USER, signed by A
    caller = A
    if case == "root chain of others":
        token = first(authority, requester=CEO, chain=[CEO, "spiffe://demo.example/agent/x"])
    elif case == "root chain not its sub":
        token = first(authority, requester=CEO, chain=[USER])
    elif case == "user root without chain":
        token = first(authority, requester=CEO, chain=[])
    elif case == "group in chain":
        token = first(authority, requester="group:admins", chain=["group:admins"])
    elif case == "wildcard sub":
        token = first(authority, requester="*", chain=[])
    elif case == "bad txn":
        token = first(authority, txn="txn-../../x")
    elif case == "non-issuer narrows":
        prev = check(first(authority), authority, caller=A)
        token = mint(
            snapshot(authority, "spiffe://demo.example/agent/c"),
            txn=prev.txn,
            requester=prev.requester,
            purpose=prev.purpose,
            chain=[*prev.chain, A],
            ttl_s=60,
            audience="spiffe://demo.example",
            prev=prev,
        )
        caller = "spiffe://demo.example/agent/c"
    else:
        issuers = []
    with pytest.raises(TxnTokenError) as caught:
        check(token, authority, caller=caller, issuers=issuers)
    assert caught.value.code == "txn_token_invalid"


def test_review_a3_1_the_roots_the_sidecar_mints_verify(authority):
    assert check(first(authority), authority, caller=A, issuers=[A]).chain == (USER,)
    agent_root = first(authority, requester=AGENT, chain=[])
    assert (
        check(agent_root, authority, caller=A, issuers=["spiffe://demo.example/agent/"]).chain == ()
    )


# --- 5: the status URL is no port scanner ---------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        "http://127.0.0.1:8443/.well-known/agent-sidecar/txn/txn-1",
        "https://127.0.0.1:0/.well-known/agent-sidecar/txn/txn-1",
        "https://127.0.0.1:99999/.well-known/agent-sidecar/txn/txn-1",
        "https://127.0.0.1:22/admin",
        "https://127.0.0.1/.well-known/agent-sidecar/txn/txn-2",
        "https://u:p@127.0.0.1/.well-known/agent-sidecar/txn/txn-1",
        "https://127.0.0.1/.well-known/agent-sidecar/txn/txn-1?x=1",
        "https:///.well-known/agent-sidecar/txn/txn-1",
    ],
)
def test_review_a3_5_a_status_url_that_is_not_an_origin_status_url_is_refused(authority, status):
    with pytest.raises(TxnTokenError, match=r"rctx\.status"):
        check(first(authority, status_url=status), authority, caller=A)


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def connected_to(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def test_review_a3_5_the_origin_is_asked_only_after_policy_and_only_at_allowed_hosts(
    open_inbound, agent, authority, tmp_path
):
    victim = listening_socket()  # stands for any internal service
    try:
        port = victim.getsockname()[1]
        status = f"https://127.0.0.1:{port}/.well-known/agent-sidecar/txn/txn-1"
        token = first(authority, requester=A, chain=[], status_url=status)
        tls = client_tls(authority, tmp_path, A)
        denied = post(
            open_inbound, message("x", skill="lookup"), tls=tls, headers={TXN_HEADER: token}
        )
        assert error_code(denied) == "inbound_denied"
        allowed = post(open_inbound, message("x"), tls=tls, headers={TXN_HEADER: token})
        assert error_code(allowed) == "txn_ended"
        assert allowed.json()["error"]["message"] == (
            "the transaction's origin did not confirm that it is active"
        )  # nothing of the host, port or how it answered
        assert not connected_to(victim)  # not in txn_status_hosts: never connected to
        assert agent.seen == []
        codes = [r["outcome"]["code"] for r in records(open_inbound.audit_path, 2)]
        assert codes == ["inbound_denied", "txn_ended"]
    finally:
        victim.close()


def test_review_a3_5_an_allowed_origins_answer_is_generic_and_cached(
    start_jwt_sidecar, agent, authority, tmp_path
):
    policy = str(write_policy(tmp_path / "policy", OPEN_POLICY))
    port = free_port()
    origin_url = f"https://127.0.0.1:{port}/"
    o = start_jwt_sidecar(
        policy={"dir": policy},
        a2a_inbound={"listen": f"127.0.0.1:{port}", "url": origin_url, "agent_url": agent.url},
    )
    h = start_jwt_sidecar(
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
            "txn_status_cache_s": 60,
        },
    )
    h.url = f"https://127.0.0.1:{h.sidecar.a2a_inbound.port}/"
    task = o.sidecar.tasks.start(AGENT, "refund order 7")
    headers = o.sidecar.a2a_inbound.provenance.outbound_headers(task)
    claims = jwt.decode(headers[TXN_HEADER], options={"verify_signature": False})
    assert claims["rctx"]["status"].startswith(origin_url) and claims["azd"]["chain"] == []
    as_o = client_tls(authority, tmp_path, SIDECAR_ID)
    assert "result" in post(h, message("refund"), tls=as_o, headers=headers).json()
    o.sidecar.tasks.end(task.id, AGENT)
    # The origin's "active" is reused for txn_status_cache_s: no second ask yet.
    assert "result" in post(h, message("refund"), tls=as_o, headers=headers).json()
    # Another transaction of the same origin, ended: asked, and a generic refusal.
    ended = o.sidecar.tasks.start(AGENT, "refund order 8")
    other = o.sidecar.a2a_inbound.provenance.outbound_headers(ended)
    o.sidecar.tasks.end(ended.id, AGENT)
    refused = post(h, message("refund"), tls=as_o, headers=other)
    assert error_code(refused) == "txn_ended"
    assert refused.json()["error"]["message"] == (
        "the transaction's origin did not confirm that it is active"
    )


# --- 6: every malformed token is refused and audited ---------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"rctx": "x"},
        {"rctx": ["req_wl"]},
        {"azd": "x"},
        {"azd": {"chain": "abc"}},
        {"prev": 5},
        {"prev": {"a": 1}},
        {"iat": True},
        {"exp": 1e12},
        {"txn": {"x": 1}},
        {"sub": ["a"]},
        {"rctx": {"req_wl": A, "status": 7}},
    ],
)
def test_review_a3_6_a_malformed_signed_claim_is_txn_token_invalid_and_audited(
    inbound, agent, authority, tmp_path, changes
):
    token = signed(authority, A, root_claims(A, **changes))
    answer = post(
        inbound,
        message("refund"),
        tls=client_tls(authority, tmp_path, A),
        headers={TXN_HEADER: token},
    )
    assert answer.status_code == 401, answer.text
    assert error_code(answer) == "txn_token_invalid"
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "txn_token_invalid"
    assert agent.seen == []


# --- 7: the chain is bounded at every level --------------------------------------------------


def test_review_a3_7_a_chain_longer_than_max_links_is_refused_at_verification(authority):
    prev = check(first(authority), authority, caller=A)  # chain [USER]
    onward = mint(
        snapshot(authority, B),
        txn=prev.txn,
        requester=prev.requester,
        purpose=prev.purpose,
        chain=[*prev.chain, A],
        ttl_s=60,
        audience="spiffe://demo.example",
        prev=prev,
    )
    assert check(onward, authority, caller=B, max_depth=3).chain == (USER, A)
    with pytest.raises(TxnTokenError, match="max_links"):
        check(onward, authority, caller=B, max_depth=2)  # [USER, A] + the presenter: 3 links


def test_review_a3_7_an_overlong_chain_at_the_listener_is_401_not_500(
    start_jwt_sidecar, agent, authority, tmp_path
):
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", OPEN_POLICY))},
        delegation={"max_links": 1},
        a2a_inbound={
            "listen": "127.0.0.1:0",
            "agent_url": agent.url,
            "agent_id": AGENT,
            "txn_issuers": [A],
        },
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    answer = post(
        running,
        message("refund"),
        tls=client_tls(authority, tmp_path, A),
        headers={TXN_HEADER: first(authority)},  # [USER] + A: two links
    )
    assert answer.status_code == 401 and error_code(answer) == "txn_token_invalid"
    assert [r["outcome"]["code"] for r in records(running.audit_path)] == ["txn_token_invalid"]


# --- 10: concurrent first outbound calls under one task --------------------------------------


class _Identity:
    def __init__(self, snap) -> None:
        self._snap = snap

    def snapshot(self):
        return self._snap


def test_review_a3_10_concurrent_first_calls_under_one_task_share_one_transaction(
    authority, tmp_path: Path
):
    db = open_state(StateSettings(dir=tmp_path / "state"))
    try:
        tasks = TaskRegistry(db, TaskSettings())
        binder = ProvenanceBinder(
            tasks,
            _Identity(snapshot(authority, A)),  # type: ignore[arg-type]
            agent_id="",
            trust_domains=(),
            task_ttl_s=0,
            token_ttl_s=60,
            max_links=8,
        )
        for _ in range(20):
            task = tasks.start(AGENT, "refund")
            barrier = threading.Barrier(4)
            txns: list[str] = []
            errors: list[BaseException] = []

            def go(task=task, barrier=barrier, txns=txns, errors=errors) -> None:
                barrier.wait()
                try:
                    token = binder.outbound_headers(task)[TXN_HEADER]
                    txns.append(jwt.decode(token, options={"verify_signature": False})["txn"])
                except BaseException as exc:  # collected for the assertion
                    errors.append(exc)

            threads = [threading.Thread(target=go) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert len(txns) == 4 and len(set(txns)) == 1  # one transaction, whoever bound it
    finally:
        db.close()
