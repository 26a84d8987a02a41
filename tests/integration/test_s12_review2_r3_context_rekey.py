"""Review 2 s12, R3: context rows recorded before keys were folded (``context:Ticket-7``) are
moved to their folded key before the first prune, so another agent cannot claim a variant
(``ticket-7``) and then own the first agent's context. SQLite and a real PostgreSQL server
(the ``open_store`` fixture of test_s12_a2a_ownership_store.py); no sleeps, injected clocks.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sidecar.a2a.context_rekey import rekey_contexts
from sidecar.a2a.ownership_retention import OwnershipRetention
from sidecar.a2a.task_owners import TaskOwners
from tests.integration import test_s12_a2a_ownership_store as _store

open_store = _store.open_store  # the fixture: SQLite and PostgreSQL
PEER = "a2a-peer:billing"
OTHER = "a2a-peer:crm"
SUPPORT = "spiffe://demo.example/agent/support"
PLANNER = "spiffe://demo.example/agent/planner"
INTERN = "spiffe://demo.example/agent/intern"
NOW = 10**18
WEEK_S = 7 * 86400


def _legacy(db: Any, agent: str, key: str, caller: str, created: int, used: int = NOW) -> None:
    """A row as the release before folding recorded it (the id as sent)."""
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
            "VALUES (?,?,?,?,?)",
            (agent, key, caller, created, used),
        )


def _rows(db: Any) -> dict[tuple[str, str], tuple[str, int, int]]:
    rows = db.query("SELECT agent, task_id, caller, created_ns, used_ns FROM a2a_task_owners")
    return {
        (str(r["agent"]), str(r["task_id"])): (
            str(r["caller"]),
            int(r["created_ns"]),
            int(r["used_ns"]),
        )
        for r in rows
    }


def _sweep(db: Any) -> None:
    """The sidecar's sweep, first pass (sidecar/app.py runs it on worker 0)."""
    retention = OwnershipRetention(db, WEEK_S, now=lambda: NOW, clock=lambda: 0.0)
    assert retention.run_if_due() is not None


def test_r3_the_reviewers_scenario_a_variant_cannot_be_claimed_after_the_sweep(open_store):
    db = open_store()
    _legacy(db, PEER, "context:Ticket-7", SUPPORT, NOW - 10)
    owners = TaskOwners(db, now=lambda: NOW)
    _sweep(db)
    assert owners.owners(PEER, "", "ticket-7", touch=False)[1] == SUPPORT  # found by a variant
    assert owners.claim(PEER, PLANNER, "context:ticket-7", 10000) == SUPPORT  # refused
    assert owners.owners(PEER, "", "Ticket-7", touch=False)[1] == SUPPORT
    assert _rows(db) == {(PEER, "context:ticket-7"): (SUPPORT, NOW - 10, NOW)}


def test_r3_a_variant_claimed_before_the_sweep_goes_back_to_the_earliest_owner(open_store):
    """The upgrade window: planner claimed ``ticket-7`` after support's legacy row."""
    db = open_store()
    _legacy(db, PEER, "context:Ticket-7", SUPPORT, NOW - 100, used=NOW - 50)
    owners = TaskOwners(db, now=lambda: NOW)
    assert owners.claim(PEER, PLANNER, "context:ticket-7", 10000) == PLANNER  # the old hole
    _sweep(db)
    assert owners.owners(PEER, "", "Ticket-7", touch=False)[1] == SUPPORT
    assert owners.owners(PEER, "", "ticket-7", touch=False)[1] == SUPPORT
    assert owners.claim(PEER, PLANNER, "context:TICKET-7", 10000) == SUPPORT
    # the later use (planner's claim at NOW) is kept: the row gets its full retention
    assert _rows(db) == {(PEER, "context:ticket-7"): (SUPPORT, NOW - 100, NOW)}


def test_r3_an_earlier_folded_row_keeps_its_owner_and_the_variants_go(open_store):
    db = open_store()
    _legacy(db, PEER, "context:ticket-7", PLANNER, NOW - 500)
    for i, variant in enumerate(
        [
            "Ticket-7",
            "TICKET-7",
            "\uff54\uff49\uff43\uff4b\uff45\uff54-7",
            "ticket\u200b-7",
            "ticket\u22127",
        ]
    ):
        _legacy(db, PEER, "context:" + variant, SUPPORT if i % 2 else INTERN, NOW - 400 + i)
    assert rekey_contexts(db) == 5
    assert _rows(db) == {(PEER, "context:ticket-7"): (PLANNER, NOW - 500, NOW)}


def test_r3_agents_tasks_and_folded_rows_are_left_alone(open_store):
    db = open_store()
    _legacy(db, PEER, "context:Ticket-7", SUPPORT, NOW - 10)
    _legacy(db, OTHER, "context:Ticket-7", PLANNER, NOW - 20)  # another agent key: its own
    _legacy(db, PEER, "task:Task-A", SUPPORT, NOW - 30)  # task ids are never folded
    _legacy(db, PEER, "CONTEXT:Other", INTERN, NOW - 40)  # not a context key (SQLite LIKE)
    _legacy(db, PEER, "context:already", INTERN, NOW - 50)
    assert rekey_contexts(db) == 2
    assert _rows(db) == {
        (PEER, "context:ticket-7"): (SUPPORT, NOW - 10, NOW),
        (OTHER, "context:ticket-7"): (PLANNER, NOW - 20, NOW),
        (PEER, "task:Task-A"): (SUPPORT, NOW - 30, NOW),
        (PEER, "CONTEXT:Other"): (INTERN, NOW - 40, NOW),
        (PEER, "context:already"): (INTERN, NOW - 50, NOW),
    }
    assert rekey_contexts(db) == 0  # idempotent: a second pass (another replica) moves nothing


def _cased(word: str, bits: int) -> str:
    return "".join(c.upper() if (bits >> b) & 1 else c for b, c in enumerate(word))


def test_r3_hostile_ids_long_control_and_many_variants(open_store):
    """An id folding to a digest key, ids of control characters only, and more variants of
    one id than one batch settles: the earliest owner still wins."""
    db = open_store()
    long_id = "A" * 300
    _legacy(db, PEER, "context:" + long_id, SUPPORT, NOW - 1)
    _legacy(db, PEER, "context:\t\u200b", PLANNER, NOW - 2)  # folds to "context:" (empty)
    variants = [_cased("abcdefghi", n) for n in range(1, 451)]  # 450 unfolded ones
    for i, variant in enumerate(variants):  # the 301st, in the second batch, is the earliest
        who, created = (INTERN, NOW - 5000) if i == 300 else (PLANNER, NOW - 1000 + i)
        _legacy(db, OTHER, "context:" + variant, who, created)
    assert rekey_contexts(db) == 452  # every row was unfolded
    rows = _rows(db)
    assert rows[(OTHER, "context:abcdefghi")][0] == INTERN
    assert rows[(PEER, "context:")][0] == PLANNER
    digest = [k for (a, k) in rows if a == PEER and k.startswith("context: sha256:")]
    assert len(digest) == 1 and rows[(PEER, digest[0])][0] == SUPPORT
    assert len(rows) == 3


def test_r3_a_pass_racing_claims_and_another_replica_settles_one_owner(open_store):
    """Two replicas' passes and a live claim at once: no error, one row, the earliest owner."""
    stores = [open_store() for _ in range(3)]
    for i in range(30):
        _legacy(stores[0], PEER, f"context:Room-{i}", SUPPORT, NOW - 100)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []
    claims: list[str] = []

    def run(job) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def claim_all() -> None:
        owners = TaskOwners(stores[2], now=lambda: NOW)
        claims.extend(owners.claim(PEER, PLANNER, f"context:room-{i}", 10000) for i in range(30))

    threads = [
        threading.Thread(target=run, args=(lambda s=stores[0]: rekey_contexts(s),)),
        threading.Thread(target=run, args=(lambda s=stores[1]: rekey_contexts(s),)),
        threading.Thread(target=run, args=(claim_all,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    rows = _rows(stores[0])
    assert set(rows) == {(PEER, f"context:room-{i}") for i in range(30)}
    assert {owner for owner, _, _ in rows.values()} == {SUPPORT}  # earliest, whoever ran first
    assert len(claims) == 30


def test_r3_the_count_is_logged_without_ids(open_store, caplog):
    db = open_store()
    _legacy(db, PEER, "context:Secret-Ticket", SUPPORT, NOW - 10)
    with caplog.at_level(logging.INFO, logger="sidecar.a2a.context_rekey"):
        _sweep(db)
    [record] = [r for r in caplog.records if r.name == "sidecar.a2a.context_rekey"]
    assert record.rows == 1 and "Secret" not in record.getMessage()


def test_r3_a_failed_pass_is_retried_and_nothing_is_pruned_before_it(open_store, monkeypatch):
    db = open_store()
    _legacy(db, PEER, "context:Ticket-7", SUPPORT, NOW - 10, used=0)  # long unused
    retention = OwnershipRetention(db, WEEK_S, now=lambda: NOW, clock=lambda: 0.0)
    from sidecar.a2a import ownership_retention

    def broken(_db: Any) -> int:
        raise RuntimeError("store down")

    monkeypatch.setattr(ownership_retention, "rekey_contexts", broken)
    try:
        retention.run_if_due()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failed pass was not reported")
    assert (PEER, "context:Ticket-7") in _rows(db)  # not pruned before the re-key
    monkeypatch.setattr(ownership_retention, "rekey_contexts", rekey_contexts)
    assert retention.run_if_due().deleted == 1  # re-keyed, then pruned (unused for a week)
    assert _rows(db) == {}
