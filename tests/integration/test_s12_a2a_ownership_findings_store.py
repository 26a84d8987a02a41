"""Review s12 (A2A ownership) findings F1, F4, F5, F6 at the store: SQLite and a real
PostgreSQL server alike (the ``open_store`` fixture of test_s12_a2a_ownership_store.py).

F1: the check made before policy is a read (it marks nothing used); the claim comes after.
F4: migration 0006 gives every existing row one full retention from the upgrade.
F5: a stream outliving the retention keeps its own rows (the ledger marks them used again).
F6: contextIds a peer may fold together (case, compatibility forms, whitespace, invisible
characters, dashes) are one context with one owner; the id sent is never altered.
No sleeps: the store's clock is injected.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.a2a.context_key import context_key
from sidecar.a2a.ownership_retention import OwnershipRetention
from sidecar.a2a.peer_tasks import PeerTaskLedger, PeerTasks
from sidecar.a2a.task_owners import TOUCH_EVERY_NS, Pruned, TaskOwners
from sidecar.calls.a2a import A2aCall, PeerFailure
from sidecar.state import PostgresSettings, StateSettings, open_state
from sidecar.state.migrations import CREATE_TABLE, migrations, statements
from sidecar.state.sqlite import SqliteStateDb
from tests.integration import test_s12_a2a_ownership_store as _store

open_store = _store.open_store  # the fixture: SQLite and PostgreSQL
PEER = "a2a-peer:billing"
SUPPORT = "spiffe://demo.example/agent/support"
PLANNER = "spiffe://demo.example/agent/planner"
S = 10**9
DAY_NS = 86400 * S
WEEK_S = 7 * 86400


class Clock:
    def __init__(self, start: int) -> None:
        self.ns = start

    def __call__(self) -> int:
        return self.ns


def _send(context: str, *, stream: bool = False, task_id: str = "") -> A2aCall:
    method = "SendStreamingMessage" if stream else "SendMessage"
    return A2aCall(
        rpc_id=1,
        method=method,
        a2a_operation="stream" if stream else "send",
        version="1.0",
        skill="",
        operation="read",
        params={},
        a2a_task_id=task_id,
        context_id=context,
        streaming=stream,
    )


def _used(db: Any, key: str) -> int:
    rows = db.query("SELECT used_ns FROM a2a_task_owners WHERE task_id = ?", (key,))
    return int(rows[0]["used_ns"])


def _rows(db: Any) -> dict[str, str]:
    rows = db.query("SELECT task_id, caller FROM a2a_task_owners")
    return {str(r["task_id"]): str(r["caller"]) for r in rows}


# --- F1: the check before policy is a read; the claim comes once policy allowed ------------


def test_f1_admit_before_policy_claims_nothing_and_marks_nothing_used(open_store):
    db = open_store()
    clock = Clock(100 * DAY_NS)
    tasks = PeerTasks("billing", db, now=clock)

    async def run() -> None:
        denied = PeerTaskLedger(tasks, PLANNER, _send("support-daily"))
        await denied.admit()  # policy then refuses: claim() is never called
        assert _rows(db) == {}
        allowed = PeerTaskLedger(tasks, SUPPORT, _send("support-daily"))
        await allowed.admit()
        await allowed.claim()  # policy allowed: claimed, then sent
        assert _rows(db) == {"context:support-daily": SUPPORT}
        # the owner's own refused requests do not keep its row alive either
        clock.ns += 3 * DAY_NS
        await PeerTaskLedger(tasks, SUPPORT, _send("support-daily")).admit()
        assert _used(db, "context:support-daily") == 100 * DAY_NS
        # another agent's check is refused before policy, and changes nothing
        with pytest.raises(PeerFailure) as refused:
            await PeerTaskLedger(tasks, PLANNER, _send("support-daily")).admit()
        assert refused.value.code == "task_not_owned" and not refused.value.reached
        assert _used(db, "context:support-daily") == 100 * DAY_NS
        # an allowed request marks it used
        again = PeerTaskLedger(tasks, SUPPORT, _send("support-daily"))
        await again.admit()
        await again.claim()
        assert _used(db, "context:support-daily") == clock.ns

    asyncio.run(run())


def test_f1_the_reviewers_squat_denied_requests_never_hold_a_context(open_store):
    """The review's scenario: an agent re-sending (denied) every 6 days for 39 days."""
    db = open_store()
    clock = Clock(100 * DAY_NS)
    tasks = PeerTasks("billing", db, now=clock)
    retention = OwnershipRetention(db, WEEK_S, every_s=0, now=clock, clock=lambda: 0.0)

    async def run() -> None:
        for day in range(40):
            clock.ns += DAY_NS
            if day % 6 == 0:  # policy denies planner: admit runs, claim never does
                await PeerTaskLedger(tasks, PLANNER, _send("support-daily")).admit()
            retention.run_if_due()
        granted = PeerTaskLedger(tasks, SUPPORT, _send("support-daily"))
        await granted.admit()
        await granted.claim()
        assert _rows(db) == {"context:support-daily": SUPPORT}

    asyncio.run(run())


def test_f1_a_claim_lost_after_policy_is_refused_and_the_winner_kept(open_store):
    """Both agents pass the check (nobody owns the context), policy allows both: the claim
    decides, insert-if-absent, and the loser is refused before anything is sent."""
    tasks = PeerTasks("billing", open_store())

    async def run() -> None:
        first = PeerTaskLedger(tasks, SUPPORT, _send("race"))
        second = PeerTaskLedger(tasks, PLANNER, _send("race"))
        await first.admit()
        await second.admit()
        await first.claim()
        with pytest.raises(PeerFailure) as lost:
            await second.claim()
        assert lost.value.code == "task_not_owned" and not lost.value.reached

    asyncio.run(run())


# --- F4: the upgrade gives existing rows one full retention --------------------------------


def _legacy_sqlite(path: Path, created_ns: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(CREATE_TABLE)
    for migration in migrations("sqlite")[:5]:  # a store from before used_ns existed
        for statement in statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, 1)", (migration.version, migration.name)
        )
    conn.execute(
        "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns) VALUES (?,?,?,?)",
        (PEER, "context:support-long-conv", SUPPORT, created_ns),
    )
    conn.commit()
    conn.close()


def _legacy_postgres(dsn: str, created_ns: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(CREATE_TABLE)
        for migration in migrations("postgres")[:5]:
            for statement in statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, 1)",
                (migration.version, migration.name),
            )
        conn.execute(
            "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns) "
            "VALUES (%s, %s, %s, %s)",
            (PEER, "context:support-long-conv", SUPPORT, created_ns),
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_f4_the_upgrade_gives_every_existing_row_one_full_retention(backend, tmp_path, request):
    created = time.time_ns() - 30 * DAY_NS  # made a month ago, in use since (never recorded)
    if backend == "sqlite":
        _legacy_sqlite(tmp_path / "state.db", created)
        before = time.time_ns()
        db: Any = SqliteStateDb(tmp_path / "state.db")
    else:
        dsn_file = Path(request.getfixturevalue("pg_state")["postgres"]["dsn_file"])
        _legacy_postgres(dsn_file.read_text().strip(), created)
        before = time.time_ns()
        db = open_state(
            StateSettings(backend="postgres", postgres=PostgresSettings(dsn_file=dsn_file))
        )
    after = time.time_ns()
    try:
        used = _used(db, "context:support-long-conv")
        # the migration's time (SQLite's clock is read to the millisecond)
        assert before - 2_000_000 <= used <= after + 2_000_000
        first = OwnershipRetention(db, WEEK_S).run_if_due()  # the sweep at start
        assert first is not None and first.deleted == 0
        assert PeerTasks("billing", db).admit(PLANNER, [], "support-long-conv", True)[1] == SUPPORT
        # unused a full retention after the upgrade: then pruned
        unused_from = time.time_ns()
        late = OwnershipRetention(db, WEEK_S, now=lambda: unused_from + WEEK_S * S + 1)
        assert late.run_if_due() == Pruned(1, more=False)
    finally:
        db.close()


def test_f4_a_row_a_previous_release_inserts_during_a_rolling_upgrade_is_not_pruned(
    tmp_path, request
):
    """PostgreSQL replicas upgrade one by one: a replica still on the previous release
    inserts rows without ``used_ns``. They count as used when inserted, not at 0."""
    dsn_file = Path(request.getfixturevalue("pg_state")["postgres"]["dsn_file"])
    dsn = dsn_file.read_text().strip()
    _legacy_postgres(dsn, time.time_ns())
    db = open_state(StateSettings(backend="postgres", postgres=PostgresSettings(dsn_file=dsn_file)))
    try:
        before = time.time_ns()
        with psycopg.connect(dsn) as conn:  # what the previous release's INSERT looks like
            conn.execute(
                "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns) "
                "VALUES (%s, %s, %s, %s)",
                (PEER, "context:old-replica-conv", SUPPORT, before),
            )
        assert _used(db, "context:old-replica-conv") >= before - 2_000_000
        first = OwnershipRetention(db, WEEK_S).run_if_due()
        assert first is not None and first.deleted == 0
        assert PeerTasks("billing", db).admit(PLANNER, [], "old-replica-conv", True)[1] == SUPPORT
    finally:
        db.close()


# --- F5: a stream outliving the retention keeps its rows -----------------------------------


def test_f5_a_stream_longer_than_the_retention_keeps_its_rows(open_store):
    """The review's probe: a 15-minute stream, retention 600 s, an event naming the task
    and the context every minute, the sweep after each."""
    db = open_store()
    clock = Clock(10**6 * S)
    tasks = PeerTasks("billing", db, now=clock)
    retention = OwnershipRetention(db, 600, every_s=0, now=clock, clock=lambda: 0.0)
    event = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "statusUpdate": {
                "taskId": "T1",
                "contextId": "support-conv-7",
                "status": {"state": "working"},
            }
        },
    }

    async def run() -> None:
        ledger = PeerTaskLedger(tasks, SUPPORT, _send("support-conv-7", stream=True))
        await ledger.admit()
        await ledger.claim()
        await ledger.answer(event)
        for _ in range(15):
            clock.ns += 60 * S
            await ledger.answer(event)
            retention.run_if_due()
        assert _rows(db) == {"context:support-conv-7": SUPPORT, "task:T1": SUPPORT}
        late = PeerTaskLedger(tasks, PLANNER, _send("support-conv-7"))
        with pytest.raises(PeerFailure):
            await late.admit()

    asyncio.run(run())


def test_f5_a_stream_marks_its_rows_used_at_most_once_per_interval(open_store):
    db = open_store()
    clock = Clock(10**6 * S)
    tasks = PeerTasks("billing", db, now=clock)
    event = {"result": {"statusUpdate": {"taskId": "T2", "contextId": "c2", "status": {}}}}

    async def run() -> None:
        ledger = PeerTaskLedger(tasks, SUPPORT, _send("c2", stream=True))
        await ledger.admit()
        await ledger.claim()
        await ledger.answer(event)
        start = clock.ns
        for _ in range(5):  # events every 10 s: within the interval, no write
            clock.ns += 10 * S
            await ledger.answer(event)
        assert _used(db, "task:T2") == _used(db, "context:c2") == start
        clock.ns = start + TOUCH_EVERY_NS
        await ledger.answer(event)
        assert _used(db, "task:T2") == _used(db, "context:c2") == clock.ns
        # a row pruned meanwhile (the stream went quiet past the retention) is recorded
        # again by the next event naming it: the first answer naming an id decides
        with db.transaction() as conn:
            conn.execute("DELETE FROM a2a_task_owners WHERE task_id = ?", ("task:T2",))
        clock.ns += TOUCH_EVERY_NS
        await ledger.answer(event)
        assert _rows(db)["task:T2"] == SUPPORT

    asyncio.run(run())


# --- F6: a context is owned under its folded key -------------------------------------------

VARIANTS = [
    "session-42",
    "SESSION-42",
    "Session-42 ",
    " Session-42",
    "\tSession-42",
    "Session-42\n",
    "Session-42\u200b",  # zero-width space
    "\u200bSession-42",
    "Session-42\ufeff",  # byte order mark
    "\uff33ession-42",  # fullwidth S
    "Session\u201142",  # non-breaking hyphen
    "Session\u221242",  # minus sign
    "Session\uff0d42",  # fullwidth hyphen-minus
    "Session-\U0001d7fa2",  # mathematical monospace digit four
    "Sess\u00adion-42",  # soft hyphen
    "Session-42\u00a0",  # no-break space
]


def test_f6_variants_of_a_context_have_one_owner(open_store):
    tasks = PeerTasks("billing", open_store())

    async def run() -> None:
        owner = PeerTaskLedger(tasks, SUPPORT, _send("Session-42"))
        await owner.admit()
        await owner.claim()
        for variant in VARIANTS:
            assert context_key(variant) == context_key("Session-42"), repr(variant)
            with pytest.raises(PeerFailure) as refused:
                await PeerTaskLedger(tasks, PLANNER, _send(variant)).admit()
            assert refused.value.code == "task_not_owned", repr(variant)
            # and at the claim, were the check ever passed (a race)
            with pytest.raises(PeerFailure):
                await PeerTaskLedger(tasks, PLANNER, _send(variant)).claim()
            mine = PeerTaskLedger(tasks, SUPPORT, _send(variant))
            await mine.admit()
            await mine.claim()  # the owner's own variants are its own
        # a different letter is a different context
        other = PeerTaskLedger(tasks, PLANNER, _send("Se\u0301ssion-42"))
        await other.admit()
        await other.claim()

    asyncio.run(run())
    assert tasks.lookup([], "SESSION-42")[1] == SUPPORT
    assert tasks.lookup([], "s\u00e9ssion-42")[1] == PLANNER


def test_f6_a_context_a_peer_answered_with_is_owned_folded(open_store):
    db = open_store()
    tasks = PeerTasks("billing", db)

    async def run() -> None:
        ledger = PeerTaskLedger(tasks, SUPPORT, _send(""))
        await ledger.answer(
            {"result": {"task": {"id": "t", "contextId": "Peer-Ctx", "status": {}}}}
        )
        for variant in ("peer-ctx", "PEER-CTX ", "Peer\u2010Ctx"):
            with pytest.raises(PeerFailure):
                await PeerTaskLedger(tasks, PLANNER, _send(variant)).admit()

    asyncio.run(run())
    assert _rows(db) == {"context:peer-ctx": SUPPORT, "task:t": SUPPORT}  # task ids exact


def test_f6_a_row_from_before_folding_is_still_found(open_store):
    db = open_store()
    with db.transaction() as conn:  # recorded under the id as it was, before the upgrade
        conn.execute(
            "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns, used_ns) "
            "VALUES (?, ?, ?, 1, 1)",
            (PEER, "context:Legacy-Ctx", SUPPORT),
        )
    tasks = PeerTasks("billing", db)
    assert tasks.lookup([], "Legacy-Ctx", touch=False)[1] == SUPPORT
    assert tasks.lookup([], "legacy-ctx", touch=False)[1] == ""  # the folded key: none yet
    assert tasks.admit(PLANNER, [], "Legacy-Ctx", True)[1] == SUPPORT  # no second owner
    assert tasks.admit(SUPPORT, [], "Legacy-Ctx", True)[1] == SUPPORT
    assert _used(db, "context:Legacy-Ctx") > 1  # used: the legacy row itself marked


def test_f6_hostile_context_ids_fold_to_bounded_keys(open_store):
    tasks = PeerTasks("billing", open_store())
    long = "\ufdfa" * 256  # NFKC expands each to 18 characters
    key = context_key(long)
    assert key.startswith(" sha256:") and len(key) < 80  # no folded id has a space
    assert context_key("\u200b\u200b") == ""  # nothing visible: owned under the empty key
    assert tasks.admit(SUPPORT, [], long, True)[1] == SUPPORT
    assert tasks.admit(PLANNER, [], long, True)[1] == SUPPORT
    assert tasks.admit(PLANNER, [], "\ufdfa" * 255, True)[1] == PLANNER
    assert tasks.admit(SUPPORT, [], "\u200b", True)[1] == SUPPORT
    assert tasks.admit(PLANNER, [], "\u2060\u00ad", True)[1] == SUPPORT


def test_f6_the_inbound_sides_contexts_are_folded_too(open_store):
    """The inbound side records and looks up through the same TaskOwners (inbound.py)."""
    owners = TaskOwners(open_store())
    agent = "spiffe://demo.example/agent/inbound"
    owners.record(agent, "spiffe://x/caller-a", {"context:Conv-9", "task:T9"})
    for variant in ("conv-9", "CONV-9 ", "Conv\u20119", "\uff23onv-9\u200b"):
        assert owners.owners(agent, "", variant)[1] == "spiffe://x/caller-a", repr(variant)
    assert owners.owners(agent, "t9", "")[0] == ""  # task ids exact
