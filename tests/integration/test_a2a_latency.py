"""Issue 34 "Measure": what was cut from A2A through two sidecars, each with the guarantee it
must keep, against the real listener (TLS, real SVIDs, the unmodified a2a-sdk agent) and the
real state stores (SQLite, PostgreSQL). docs/a2a.md "Measured" has the numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import sidecar.a2a.inbound as inbound_module
from sidecar.a2a.callers import Caller, VerifiedCallers
from sidecar.a2a.cards import CardBook
from sidecar.a2a.errors import TxnTokenError
from sidecar.a2a.pins import CardPinStore
from sidecar.a2a.provenance import ProvenanceBinder
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.state import open_state
from sidecar.state.settings import PostgresSettings, StateSettings
from sidecar.tasks import Provenance, TaskError, TaskRegistry
from sidecar.tasks_settings import TaskSettings
from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_ID
from tests.integration.test_a2a_inbound import (
    AGENT,
    PLANNER,
    client_tls,
    post,
    records,
    seen_by_agent,
)
from tests.integration.test_a2a_inbound import agent as agent
from tests.integration.test_review_a3 import error_code, rpc, send
from tests.integration.test_review_a3 import open_inbound as open_inbound
from tests.support.a2a_cards import CardServer, card
from tests.support.policies import write_policy
from tests.support.settle import poll

PARTNER = "spiffe://partner.example/agent/planner"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        db = open_state(StateSettings(dir=tmp_path / "state"))
    else:
        pg_state = request.getfixturevalue("pg_state")
        db = open_state(
            StateSettings(
                backend="postgres",
                postgres=PostgresSettings(dsn_file=Path(pg_state["postgres"]["dsn_file"])),
            )
        )
    yield db
    db.close()


def _binder(tasks: TaskRegistry) -> ProvenanceBinder:
    return ProvenanceBinder(
        tasks,
        None,  # type: ignore[arg-type]  # agent_id is given: the SVID is never read
        agent_id=AGENT,
        trust_domains=("demo.example",),
        task_ttl_s=0,
        token_ttl_s=60,
        max_links=4,
    )


# --- 1: the inbound task opens in one transaction, and a lost one fails closed -------------


def test_item1_an_inbound_task_and_its_provenance_open_in_one_transaction(store):
    tasks = TaskRegistry(store, TaskSettings())
    caller = Caller("workload", PLANNER, "mtls", None)  # type: ignore[arg-type]
    task = _binder(tasks).open(caller, None, "lookup: order A-7")
    # What it returns is what it stored: no re-read needed.
    assert task.provenance == tasks.provenance(task.id)
    assert task.provenance is not None and task.provenance.chain == (PLANNER,)
    assert task.provenance.origin and task.provenance.requester == PLANNER
    assert tasks.get(task.id) == dataclasses.replace(task, provenance=None)

    # One transaction: a provenance that cannot be written leaves no task behind.
    hostile = Provenance(txn="txn-x", requester=PLANNER, purpose="p", chain=(object(),))  # type: ignore[arg-type]
    before = store.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"]
    with pytest.raises(TypeError):
        tasks.start_bound(AGENT, "intent", 0, hostile, durable=False)
    assert store.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"] == before
    # The bounds of StartTask hold for it too.
    with pytest.raises(TaskError) as bad:
        tasks.start_bound(AGENT, "x" * 5000, 0, task.provenance, durable=False)
    assert bad.value.code == "invalid_task"


def test_item1_a_task_lost_to_a_power_cut_fails_closed(store):
    """Committed without waiting for the disk, a task may be lost to a power cut (its
    rows are what the cut loses); every later call naming it is refused."""
    tasks = TaskRegistry(store, TaskSettings())
    binder = _binder(tasks)
    task = binder.open(Caller("workload", PLANNER, "mtls", None), None, "refund: 7")  # type: ignore[arg-type]
    assert task.provenance is not None
    txn = task.provenance.txn
    assert tasks.use(task.id, AGENT).id == task.id and tasks.txn_state(txn) == "active"
    with store.transaction() as conn:  # the power cut: the last commits never reached disk
        conn.execute("DELETE FROM task_provenance WHERE task_id = ?", (task.id,))
        conn.execute("DELETE FROM tasks WHERE id = ?", (task.id,))
    with pytest.raises(TaskError) as unknown:  # the agent's next call under the task
        tasks.use(task.id, AGENT)
    assert unknown.value.code == "task_unknown"
    with pytest.raises(TxnTokenError):  # no transaction token for a peer under it
        binder.outbound_headers(task.id)
    # A later hop asking this origin about the transaction hears "unknown": refused there
    # (test_item5_an_origin_that_cannot_be_asked_refuses_the_hop and txn_status.py).
    assert tasks.txn_state(txn) == "unknown"


def test_item1_a_read_operation_opens_no_task_and_policy_sees_read(
    open_inbound, agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    made = post(open_inbound, send("task refund order 7"), tls=planner)
    task_id = made.json()["result"]["task"]["id"]
    opened = open_inbound.sidecar.state.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"]
    got = post(open_inbound, rpc("GetTask", {"id": task_id}), tls=planner)
    assert got.json()["result"]["id"] == task_id
    # No task was opened for the read, and the agent was given none.
    assert open_inbound.sidecar.state.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"] == opened
    send_record, read_record = records(open_inbound.audit_path, 2)
    assert send_record["task"]["id"].startswith("t-") and not read_record.get("task")
    assert read_record["outcome"]["code"] == "ok"

    def whole_input(operation: str, a2a: dict[str, str], arguments: dict, record: dict) -> dict:
        return {
            "version": 1,
            "request_id": record["input"]["request_id"],
            "time_ns": record["input"]["time_ns"],
            "subject": {
                "spiffe_id": PLANNER,
                "trust_domain": "demo.example",
                "attestation": "x509-svid",
                "claims": {},
                "expires_at": record["input"]["subject"]["expires_at"],
            },
            "action": {
                "kind": "a2a_inbound",
                "name": a2a["skill"],
                "operation": operation,
                "target": "self",
                "arguments": arguments,
                "data_classes": [],
            },
            "delegation": {"chain": [], "depth": 0},
            "inbound": {
                "agent": AGENT,
                "caller": {"kind": "workload", "id": PLANNER, "via": "mtls"},
                "skill": a2a["skill"],
                "a2a_operation": a2a["op"],
                "method": a2a["method"],
                "task_owner": a2a["owner"],
            },
        }

    # A read operation is "read" and names the caller's own task; no task is opened for it.
    assert read_record["input"] == whole_input(
        "read",
        {"skill": "", "op": "get_task", "method": "GetTask", "owner": PLANNER},
        {
            "parts": {"count": 0, "kinds": [], "chars": 0},
            "task_id": task_id,
            "context_id": "",
            "metadata_keys": [],
        },
        read_record,
    )
    # A message is "act" whatever its skill: the listener cannot know what the agent will do
    # with it (and the agent's calls under the task it opens carry the caller's chain).
    assert send_record["input"] == whole_input(
        "act",
        {"skill": "refund", "op": "send", "method": "SendMessage", "owner": ""},
        {
            "parts": {"count": 1, "kinds": ["text"], "chars": len("task refund order 7")},
            "task_id": "",
            "context_id": "",
            "metadata_keys": ["skill"],
        },
        send_record,
    )


# --- 2: a unary answer is one response with its Content-Length -----------------------------


def test_item2_a_unary_answer_is_sent_with_content_length_not_chunked(
    open_inbound, agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(open_inbound, send("hello"), tls=planner)
    assert answer.status_code == 200, answer.text
    assert "transfer-encoding" not in answer.headers
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert seen_by_agent(answer)["x-agent-sidecar-caller"] == PLANNER
    assert answer.headers["x-agent-sidecar-decision-id"]


def test_item2_an_answer_over_the_bound_is_still_refused_whole(
    open_inbound, agent, authority, tmp_path, monkeypatch
):
    monkeypatch.setattr(inbound_module, "MAX_ANSWER_BYTES", 64)
    answer = post(open_inbound, send("hello"), tls=client_tls(authority, tmp_path, PLANNER))
    assert answer.status_code == 502 and error_code(answer) == "agent_unavailable"
    assert "x-agent-sidecar-caller" not in answer.text  # nothing of the agent's answer
    [record] = records(open_inbound.audit_path)
    assert record["outcome"]["code"] == "agent_unavailable"


# --- 3: a verified caller is reused only under the bundles it was verified with ------------

ANY_CALLER_POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow", "obligations": {"log": "full"}} if {
	input.action.kind == "a2a_inbound"
}
"""


def test_item3_a_rotated_bundle_that_no_longer_trusts_the_caller_refuses_it(
    start_sidecar, tools, agent, authority, tmp_path
):
    partner = DevAuthority("partner.example")
    api = DevWorkloadApi(authority, SIDECAR_ID, federated={"partner.example": partner})
    server = DevWorkloadApiServer(api, tmp_path / "wl-fed.sock").start()
    try:
        running = start_sidecar(
            tools.url,
            identity={
                "mode": "jwt",
                "socket": f"unix://{server.socket_path}",
                "audience": SIDECAR_AUDIENCE,
            },
            policy={"dir": str(write_policy(tmp_path / "policy", ANY_CALLER_POLICY))},
            a2a_inbound={
                "listen": "127.0.0.1:0",
                "agent_url": agent.url,
                "agent_id": AGENT,
                "trust_domains": ["demo.example", "partner.example"],
            },
        )
        assert running.sidecar.identity.wait_ready(10)
        poll(
            lambda: "partner.example" in running.sidecar.identity.snapshot().bundles,
            what="the partner bundle arrives",
        )
        url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
        tls = client_tls(partner, tmp_path, PARTNER)
        tls.load_verify_locations(cadata=authority.x509_bundle_pem.decode())
        with httpx.Client(verify=tls, timeout=30) as http:
            for _ in range(3):  # verified once, then served from the cache
                ok = http.post(url, json=send("hi"), headers={"A2A-Version": "1.0"})
                assert ok.status_code == 200, ok.text
                assert seen_by_agent(ok)["x-agent-sidecar-caller"] == PARTNER
            verifier = running.sidecar.a2a_inbound._verifier
            assert len(verifier._verified) == 1

            api.set_federated({})  # the partner is no longer trusted
            poll(
                lambda: "partner.example" not in running.sidecar.identity.snapshot().bundles,
                what="the rotated bundles arrive",
            )
            refused = http.post(url, json=send("hi"), headers={"A2A-Version": "1.0"})
        assert refused.status_code == 401, refused.text
        assert error_code(refused) == "caller_unverified"
        last = records(running.audit_path, 4)[-1]
        assert last["outcome"]["code"] == "caller_unverified"
    finally:
        server.stop()


def test_item3_the_verified_caller_cache_is_bounded_and_ends_with_the_certificate():
    cache = VerifiedCallers(max_entries=2)
    snapshot, other = object(), object()
    caller = Caller("workload", PLANNER, "mtls", None)  # type: ignore[arg-type]
    now = time.time()
    cache.put(b"a", snapshot, caller, now + 60)
    cache.put(b"b", snapshot, caller, now + 60)
    cache.put(b"c", snapshot, caller, now + 60)  # over the bound: the oldest goes
    assert len(cache) == 2 and cache.get(b"a", snapshot) is None
    assert cache.get(b"c", snapshot) is caller
    assert cache.get(b"c", other) is None  # another SVID or bundle set: verify again
    assert cache.get(b"c", snapshot) is None  # and the stale entry is gone
    cache.put(b"d", snapshot, caller, now - 1)  # an expired certificate is never served
    assert cache.get(b"d", snapshot) is None
    assert cache.get(b"", snapshot) is None and cache.get(b"\x00" * 5000, snapshot) is None


# --- 4: the pinned card from memory, invalidated on accept and across workers -------------


def test_item4_a_pin_accepted_here_is_seen_at_once_and_on_another_worker_within_the_bound(
    tmp_path,
):
    settings = StateSettings(dir=tmp_path / "state")
    db0, db1 = open_state(settings), open_state(settings)  # two workers, one state DB

    with CardServer() as peer:
        peers = {"billing": A2aPeerSettings(url=peer.url)}
        worker0 = CardBook(peers, CardPinStore(db0), ttl_s=300)
        worker1 = CardBook(peers, CardPinStore(db1), ttl_s=300)

        async def scenario() -> None:
            try:
                first = await worker0.card_for("billing")
                assert (await worker1.card_for("billing")).pinned_digest == first.digest
                peer.serve(card("refund", "lookup", "wire_money"))
                changed = await worker0.refresh("billing")
                assert changed.changed  # fetched again, the pin held
                assert (await worker0.card_for("billing")).changed  # the pin from memory
                _, before = await worker0.accept("billing", changed.digest, "local:carol")
                assert before == first.digest
                now = await worker0.card_for("billing")  # this worker: at once
                assert not now.changed and now.pinned_digest == changed.digest
                assert "wire_money" in now.skills

                async def on_worker1() -> Any:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        view = await worker1.card_for("billing")
                        if view.pinned_digest == changed.digest:
                            return view
                        await asyncio.sleep(0.01)
                    raise AssertionError("worker 1 never saw the accepted pin")

                seen = await on_worker1()
                assert seen.skills == ("refund", "lookup", "wire_money")
            finally:
                await worker0.aclose()
                await worker1.aclose()

        try:
            asyncio.run(scenario())
        finally:
            db0.close()
            db1.close()


def test_review_s9_perf_2_a_read_under_a_txn_token_keeps_its_transaction_in_the_audit(
    open_inbound, agent, authority, tmp_path
):
    """A read opens no task (it changes nothing), yet its record still names the transaction
    it was made under, so audit can join a delegated GetTask to its transaction."""
    from sidecar.a2a.txn_token import TXN_HEADER, mint
    from tests.integration.test_a2a_provenance import USER, A, snapshot

    token = mint(
        snapshot(authority, A),
        txn="txn-read",
        requester=USER,
        purpose="refund order 7",
        chain=[USER],
        ttl_s=60,
        audience="spiffe://demo.example",
    )
    tls = client_tls(authority, tmp_path, A)
    made = post(open_inbound, send("task refund order 7"), tls=tls, headers={TXN_HEADER: token})
    task_id = made.json()["result"]["task"]["id"]
    got = post(open_inbound, rpc("GetTask", {"id": task_id}), tls=tls, headers={TXN_HEADER: token})
    assert got.status_code == 200, got.text
    _, record = records(open_inbound.audit_path, 2)
    assert record["action"]["operation"] == "read"
    assert record["outcome"]["code"] == "ok", record["outcome"]
    assert record["task"] == {
        "origin": {"txn": "txn-read", "requester": USER, "purpose": "refund order 7"}
    }


def test_review_s9_perf_3_replacing_a_cached_caller_evicts_no_other():
    cache = VerifiedCallers(max_entries=2)
    first = Caller("workload", PLANNER, "mtls", None)  # type: ignore[arg-type]
    second = Caller("workload", "spiffe://demo.example/agent/intern", "mtls", None)  # type: ignore[arg-type]
    snap = object()
    cache.put(b"one", snap, first, time.time() + 60)
    cache.put(b"two", snap, second, time.time() + 60)
    cache.put(b"two", snap, second, time.time() + 60)  # re-verified: replaced, not added
    assert len(cache) == 2 and cache.get(b"one", snap) is first
