"""Approvals against a real SQLite state database: the digest binds every field, use is
single and atomic under concurrency, the limits hold, and state survives reopening."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from sidecar.approvals import ApprovalBroker, ApprovalError, ApprovalStore, ApproverRefused
from sidecar.approvals.model import request_digest
from sidecar.config import ApprovalSettings
from sidecar.state import SqliteStateDb, StateDb
from tests.support.settle import poll

BASE = {
    "subject": "spiffe://demo.example/agent/support",
    "delegation": [],
    "action": {"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments"},
    "arguments": {"order": "A-1", "amount": 500},
    "task_id": "t-1",
    "policy_revision": "r1",
}


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "spiffe://demo.example/agent/other"},
        {"delegation": ["spiffe://demo.example/agent/planner"]},
        {"action": BASE["action"] | {"name": "payments.charge"}},
        {"action": BASE["action"] | {"operation": "read"}},
        {"action": BASE["action"] | {"target": "elsewhere"}},
        {"arguments": {"order": "A-1", "amount": 501}},
        {"arguments": {"order": "A-1", "amount": 500.0}},  # another number as text
        {"arguments": {"order": "A-1", "amount": 500, "note": ""}},
        {"task_id": "t-2"},
        {"policy_revision": "r2"},
    ],
)
def test_the_digest_changes_with_every_bound_field(change):
    assert request_digest(**BASE) != request_digest(**(BASE | change))


def test_the_digest_ignores_key_order():
    reordered = BASE | {"arguments": {"amount": 500, "order": "A-1"}}
    assert request_digest(**BASE) == request_digest(**reordered)


def _broker(tmp_path: Path, **settings) -> tuple[ApprovalBroker, StateDb]:
    db = SqliteStateDb(tmp_path / "state.db")
    groups = {"oncall": ("local:alice",)}
    return ApprovalBroker(ApprovalStore(db), ApprovalSettings(groups=groups, **settings)), db


def _request(broker: ApprovalBroker, amount: int = 500, subject: str = BASE["subject"], **kw):
    fields = BASE | {"arguments": {"order": "A-1", "amount": amount}, "subject": subject}
    return broker.request(
        digest=request_digest(**fields),
        subject=subject,
        delegation=kw.get("delegation", ()),
        action=BASE["action"],
        arguments={"log": "full", "value": fields["arguments"]},
        task_id="t-1",
        reasons=["needs approval"],
        approvers=kw.get("approvers", ["group:oncall"]),
        ttl_s=kw.get("ttl_s", 60),
        policy_revision="r1",
        decision_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
    )


def test_an_approval_is_used_once_even_by_racing_calls(tmp_path):
    broker, _ = _broker(tmp_path)
    approval = _request(broker)
    broker.decide(approval.id, approve=True, approver="local:alice", reason="ok")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        try:
            broker.claim(approval.id, approval.digest, used_by="call")
            results.append("used")
        except ApprovalError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["approval_used"] * 7 + ["used"]


def test_state_survives_reopening_the_database(tmp_path):
    broker, db = _broker(tmp_path)
    approval = _request(broker)
    broker.decide(approval.id, approve=True, approver="local:alice", reason="ok")
    db.close()
    reopened, db2 = _broker(tmp_path)
    assert reopened.get(approval.id).state == "approved"
    reopened.claim(approval.id, approval.digest, used_by="call")
    db2.close()
    again, _ = _broker(tmp_path)
    with pytest.raises(ApprovalError) as used:
        again.claim(approval.id, approval.digest, used_by="call")
    assert used.value.code == "approval_used"


def test_the_database_is_in_wal_mode(tmp_path):
    db = SqliteStateDb(tmp_path / "state.db")
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"


def test_an_identical_request_reuses_the_pending_approval(tmp_path):
    broker, _ = _broker(tmp_path)
    assert _request(broker).id == _request(broker).id
    assert _request(broker, amount=600).id != _request(broker).id


def test_pending_and_per_minute_limits(tmp_path):
    broker, _ = _broker(tmp_path, max_pending_per_subject=2, max_new_per_minute=3)
    _request(broker, 101)
    second = _request(broker, 102)
    with pytest.raises(ApprovalError) as pending:
        _request(broker, 103)
    assert pending.value.code == "approval_rate_limited"
    assert "max_pending_per_subject" in str(pending.value)
    broker.decide(second.id, approve=False, approver="local:alice", reason="no")
    _request(broker, 104)  # room again: three created this minute
    broker.decide(_request(broker, 104).id, approve=False, approver="local:alice", reason="no")
    with pytest.raises(ApprovalError) as per_minute:
        _request(broker, 105)
    assert "max_new_per_minute" in str(per_minute.value)
    # Another subject has its own budget.
    _request(broker, 105, subject="spiffe://demo.example/agent/planner")


def test_the_ttl_is_bounded_by_config(tmp_path):
    broker, _ = _broker(tmp_path, max_ttl_s=5)
    approval = _request(broker, ttl_s=900)
    assert approval.expires_at_ns - approval.created_at_ns == 5 * 10**9


@pytest.mark.parametrize(
    ("approver", "code"),
    [
        (BASE["subject"], "self_approval"),
        ("spiffe://demo.example/agent/planner", "self_approval"),  # a delegator
        ("local:mallory", "not_an_approver"),
    ],
)
def test_who_may_not_decide(tmp_path, approver, code):
    broker, _ = _broker(tmp_path)
    approval = _request(broker, delegation=["spiffe://demo.example/agent/planner"])
    with pytest.raises(ApproverRefused) as refused:
        broker.decide(approval.id, approve=True, approver=approver, reason="ok")
    assert refused.value.code == code
    assert broker.get(approval.id).state == "pending"


def test_a_decision_needs_a_reason_and_a_pending_approval(tmp_path):
    broker, _ = _broker(tmp_path)
    approval = _request(broker)
    with pytest.raises(ApproverRefused) as no_reason:
        broker.decide(approval.id, approve=True, approver="local:alice", reason="  ")
    assert no_reason.value.code == "reason_required"
    broker.decide(approval.id, approve=False, approver="local:alice", reason="no")
    with pytest.raises(ApproverRefused) as twice:
        broker.decide(approval.id, approve=True, approver="local:alice", reason="yes after all")
    assert twice.value.code == "not_pending"
    with pytest.raises(ApproverRefused) as unknown:
        broker.decide("ap-nope", approve=True, approver="local:alice", reason="x")
    assert unknown.value.code == "approval_unknown"


def test_an_approval_whose_audit_record_fails_is_not_decided(tmp_path):
    db = SqliteStateDb(tmp_path / "state.db")

    def failing_audit(*_):
        raise OSError("disk full")

    broker = ApprovalBroker(
        ApprovalStore(db),
        ApprovalSettings(groups={"oncall": ("local:alice",)}),
        record=failing_audit,
    )
    approval = _request(broker)
    with pytest.raises(OSError):
        broker.decide(approval.id, approve=True, approver="local:alice", reason="ok")
    assert broker.get(approval.id).state == "pending"


def test_waiting_wakes_on_the_decision_and_times_out_pending(tmp_path):
    broker, _ = _broker(tmp_path)
    approval = _request(broker)

    read = broker._store.get
    reads: list[str] = []

    def observed_get(approval_id: str):
        found = read(approval_id)
        reads.append(found.state)  # after the read: a decision now cannot be in what it saw
        return found

    broker._store.get = observed_get  # type: ignore[method-assign]

    async def scenario() -> tuple[str, str]:
        timed_out = await broker.wait(approval.id, 0.2)  # the wait's own timeout: still pending
        before = len(reads)
        waiting = asyncio.ensure_future(broker.wait(approval.id, 60))
        # Barrier, not a delay: the wait has read "pending", so only a wake-up can end it.
        for _ in range(3000):  # bounded poll
            if len(reads) > before:
                break
            await asyncio.sleep(0.01)
        assert reads[before:] == ["pending"]
        broker.decide(approval.id, approve=True, approver="local:alice", reason="ok")
        decided = await asyncio.wait_for(waiting, 30)  # woken by the decision, not the timeout
        return timed_out.state, decided.state

    assert asyncio.run(scenario()) == ("pending", "approved")


def test_expiry_ends_pending_and_approved_approvals(tmp_path):
    broker, _ = _broker(tmp_path)
    approval = _request(broker, ttl_s=1)
    broker.decide(approval.id, approve=True, approver="local:alice", reason="ok")
    # The broker's clock (this process's) passes the expiry: polled, bounded, not slept.
    poll(lambda: time.time_ns() >= approval.expires_at_ns, what="the approval's expiry")
    with pytest.raises(ApprovalError) as expired:
        broker.claim(approval.id, approval.digest, used_by="call")
    assert expired.value.code == "approval_expired"
    assert broker.get(approval.id).state == "expired"


def _for_user(broker: ApprovalBroker, user: dict | None, **kw):
    """A pending approval for a call the agent makes on behalf of ``user``."""
    fields = BASE | {"arguments": {"order": "A-1", "amount": 500}}
    return broker.request(
        digest=request_digest(**fields, user=user),
        subject=BASE["subject"],
        delegation=kw.get("delegation", ()),
        action=BASE["action"],
        arguments={"log": "full", "value": fields["arguments"]},
        task_id="t-1",
        reasons=["needs approval"],
        approvers=kw.get("approvers", ()),
        ttl_s=60,
        policy_revision="r1",
        decision_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        user=user,
    )


BOSS = {"sub": "boss@example.com", "iss": "https://login.example.com"}


@pytest.mark.parametrize(
    "approver",
    [
        "user:boss@example.com",  # the console, through the proxy
        "user:BOSS@Example.COM",  # e-mail addresses are not case-sensitive here
        "local:boss@example.com",  # the approvals socket, --as boss@example.com
        "local:boss@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",  # fullwidth: NFKC folds it
        "boss@example.com",  # however the approver is named, bare
        BASE["subject"],  # the requesting workload itself
    ],
)
def test_item4_the_user_a_call_acts_for_cannot_decide_it(tmp_path, approver):
    broker, db = _broker(tmp_path)
    approval = _for_user(broker, BOSS)
    assert approval.user == BOSS
    for approve in (True, False):  # neither approve nor deny
        with pytest.raises(ApproverRefused) as refused:
            broker.decide(approval.id, approve=approve, approver=approver, reason="mine")
        assert refused.value.code == "self_approval"
    assert broker.get(approval.id).state == "pending"
    db.close()
    reopened, _ = _broker(tmp_path)  # the user is kept in the store, not in memory
    assert reopened.get(approval.id).user == BOSS
    with pytest.raises(ApproverRefused):
        reopened.decide(approval.id, approve=True, approver="user:boss@example.com", reason="x")


def test_item4_others_may_decide_and_calls_without_a_user_are_unchanged(tmp_path):
    broker, _ = _broker(tmp_path)
    # Names that merely resemble the user's are other people.
    for other in ("user:boss@example.co", "user:oss@example.com", "local:boss"):
        approval = _for_user(broker, BOSS | {"iss": other})  # another request each time
        decided = broker.decide(approval.id, approve=True, approver=other, reason="ok")
        assert decided.state == "approved" and decided.decided_by == other
    plain = _for_user(broker, None)
    assert plain.user == {}
    broker.decide(plain.id, approve=False, approver="user:boss@example.com", reason="no")
    assert broker.get(plain.id).state == "denied"


def test_item4_a_stored_user_of_the_wrong_type_is_read_as_none():
    from sidecar.approvals.model import Approval

    doc = {"id": "ap-1", "state": "pending", "digest": "d", "subject": "s", "action": {},
           "arguments": {}, "task_id": "", "reasons": [], "approvers": [], "expires_at_ns": 1,
           "policy_revision": "r", "decision_id": "x", "created_at_ns": 0}  # fmt: skip
    for user in (None, "boss", ["boss"], 7):
        assert Approval.from_doc(doc | {"user": user}).user == {}
    kept = Approval.from_doc(doc | {"user": {"sub": "b", "iss": "i", "token": "never"}})
    assert kept.user == {"sub": "b", "iss": "i"}


# Most IdPs issue an opaque ``sub``; the console names its approver by e-mail.
OPAQUE = {
    "sub": "00u8f3k2JqZ9xQ1a4h7",
    "iss": "https://login.example.com",
    "email": "boss@example.com",
    "preferred_username": "Boss.Man",
}


@pytest.mark.parametrize(
    "approver",
    [
        "user:boss@example.com",  # the console: X-Forwarded-Email
        "user:BOSS@EXAMPLE.COM",
        "local:boss@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",  # fullwidth: NFKC folds it
        "local:boss.man",  # the approvals socket, --as boss.man (preferred_username)
        "user: Boss.Man ",
        "local:00u8f3k2jqz9xq1a4h7",  # the opaque sub, case-folded
    ],
)
def test_item1_an_opaque_sub_does_not_hide_the_user_by_email_or_username(tmp_path, approver):
    broker, db = _broker(tmp_path)
    approval = _for_user(broker, OPAQUE | {"token": "eyJ.never.kept", "email_verified": False})
    assert approval.user == OPAQUE  # the names, never the token
    for approve in (True, False):
        with pytest.raises(ApproverRefused) as refused:
            broker.decide(approval.id, approve=approve, approver=approver, reason="mine")
        assert refused.value.code == "self_approval"
        assert "is the user this request acts for" in str(refused.value)
    db.close()
    reopened, _ = _broker(tmp_path)  # every name is kept in the store, not in memory
    assert reopened.get(approval.id).user == OPAQUE
    with pytest.raises(ApproverRefused):
        reopened.decide(approval.id, approve=True, approver=approver, reason="x")


def test_item1_names_the_token_lacks_or_garbles_refuse_no_one_else(tmp_path):
    broker, _ = _broker(tmp_path)
    hostile = {"sub": "00u1", "iss": "https://login.example.com", "email": "",
               "preferred_username": "   "}  # fmt: skip
    approval = _for_user(broker, hostile)
    assert approval.user["sub"] == "00u1" and "email" not in approval.user
    # An empty or blank name matches no approver (it would otherwise match "user:").
    for approver in ("user:", "local: ", "user:boss@example.com"):
        other = _for_user(broker, hostile | {"iss": approver or "x"})
        decided = broker.decide(other.id, approve=True, approver=approver, reason="ok")
        assert decided.state == "approved"


def test_item1_a_stored_user_keeps_only_the_names():
    from sidecar.approvals.model import Approval

    doc = {"id": "ap-1", "state": "pending", "digest": "d", "subject": "s", "action": {},
           "arguments": {}, "task_id": "", "reasons": [], "approvers": [], "expires_at_ns": 1,
           "policy_revision": "r", "decision_id": "x", "created_at_ns": 0}  # fmt: skip
    stored = OPAQUE | {"token": "never", "groups": ["x"], "email_verified": True}
    assert Approval.from_doc(doc | {"user": stored}).user == OPAQUE
