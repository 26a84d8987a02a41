"""The PostgreSQL state store against a real server: migrations, the guarantees the SQLite
store gives (now across replicas: several stores with their own pools on one database), the
change feed, and an outage the store survives by itself."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from sidecar.approvals import ApprovalBroker, ApprovalStore
from sidecar.approvals.errors import ApprovalError
from sidecar.budgets import BudgetExceeded, Budgets
from sidecar.config import ApprovalSettings, BudgetSettings, TaskSettings
from sidecar.state import MigrationError, StateError, StateSettings, open_state
from sidecar.state.postgres import describe_dsn
from sidecar.tasks import TaskRegistry
from tests.support.fleet import poll

ROOT = Path(__file__).resolve().parents[2]


def _settings(pg_state: dict, **postgres) -> StateSettings:
    from sidecar.state import PostgresSettings

    options = {"dsn_file": Path(pg_state["postgres"]["dsn_file"])} | postgres
    return StateSettings(backend="postgres", postgres=PostgresSettings(**options))


def _dsn(pg_state: dict) -> str:
    return Path(pg_state["postgres"]["dsn_file"]).read_text().strip()


@pytest.fixture
def stores(pg_state):
    """Open stores ("replicas") on one database; all closed at the end."""
    opened = []

    def open_one(**postgres):
        db = open_state(_settings(pg_state, **postgres))
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        db.close()


def _versions(pg_state) -> list[tuple[int, str]]:
    with psycopg.connect(_dsn(pg_state)) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()


def test_migrations_apply_once_even_when_replicas_start_together(pg_state, stores):
    with ThreadPoolExecutor(6) as pool:
        dbs = list(pool.map(lambda _: stores(), range(6)))
    # Every migration this build ships, each applied exactly once.
    shipped = sorted(
        (int(f.name[:4]), f.stem[5:])
        for f in (ROOT / "sidecar" / "state" / "migrations" / "postgres").glob("*.sql")
    )
    assert [v for v, _ in shipped] == list(range(1, len(shipped) + 1))
    assert {db.schema_version for db in dbs} == {len(shipped)}
    assert _versions(pg_state) == shipped
    stores()  # opening again changes nothing
    assert _versions(pg_state) == shipped


def test_a_database_newer_than_this_build_is_refused(pg_state, stores):
    stores()
    with psycopg.connect(_dsn(pg_state)) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises(MigrationError, match="version 99, newer than this build knows"):
        stores()


def _approval_settings() -> ApprovalSettings:
    return ApprovalSettings(groups={"oncall": ("local:bob",)})


def _pending(broker: ApprovalBroker, digest: str = "sha256:x", task_id: str = "") -> object:
    return broker.request(
        digest=digest, subject="spiffe://demo.example/agent/a", delegation=(),
        action={"kind": "tool", "name": "payments.refund", "operation": "act", "target": "p"},
        arguments={"amount": 1}, task_id=task_id, reasons=("big",), approvers=("group:oncall",),
        ttl_s=300, policy_revision="r1", decision_id="d-1",
    )  # fmt: skip


def test_an_approval_is_used_once_when_twenty_replicas_race(stores):
    replicas = [ApprovalBroker(ApprovalStore(stores()), _approval_settings()) for _ in range(20)]
    approval = _pending(replicas[0])
    replicas[1].decide(approval.id, approve=True, approver="local:bob", reason="ok")
    start = threading.Barrier(20)

    def claim(broker: ApprovalBroker) -> str:
        start.wait()
        try:
            broker.claim(approval.id, "sha256:x", "call")
            return "used"
        except ApprovalError as exc:
            return exc.code

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(claim, replicas))
    assert outcomes.count("used") == 1
    assert set(outcomes) == {"used", "approval_used"}


def test_budget_reservations_across_replicas_overshoot_by_at_most_one_estimate(stores):
    budgets_settings = BudgetSettings(task_tokens=100, subject_tokens_per_day=250)
    replicas = []
    for _ in range(3):
        db = stores()
        tasks = TaskRegistry(db, TaskSettings())
        replicas.append((tasks, Budgets(db, budgets_settings, tasks)))
    task = replicas[0][0].start("spiffe://demo.example/agent/a", "budget")
    start = threading.Barrier(50)

    def reserve(i: int) -> bool:
        _, budgets = replicas[i % 3]
        start.wait()
        try:
            budgets.reserve("spiffe://demo.example/agent/a", task.id, 30)
            return True
        except BudgetExceeded:
            return False

    with ThreadPoolExecutor(50) as pool:
        granted = sum(pool.map(reserve, range(50)))
    used = replicas[2][0].get(task.id).tokens
    assert granted == 4 and used == 120  # 0, 30, 60, 90 < 100: the fourth overshoots by < 30
    assert replicas[1][1].subject_tokens("spiffe://demo.example/agent/a") == 120


def test_the_subject_budget_counts_every_replicas_calls(stores):
    settings = BudgetSettings(subject_tokens_per_day=100)
    replicas = []
    for _ in range(2):
        db = stores()
        replicas.append(Budgets(db, settings, TaskRegistry(db, TaskSettings())))
    first = replicas[0].reserve("spiffe://demo.example/agent/a", "", 60)
    replicas[1].reserve("spiffe://demo.example/agent/a", "", 60)
    with pytest.raises(BudgetExceeded, match="has used or reserved 120"):
        replicas[1].reserve("spiffe://demo.example/agent/a", "", 1)
    replicas[0].settle(first, 10)  # the provider said 10: the rest goes back
    assert replicas[1].subject_tokens("spiffe://demo.example/agent/a") == 70
    replicas[1].reserve("spiffe://demo.example/agent/a", "", 1)


def test_ending_a_task_on_one_replica_is_heard_on_the_others(stores):
    a, b = stores(), stores()
    tasks_a, tasks_b = TaskRegistry(a, TaskSettings()), TaskRegistry(b, TaskSettings())
    heard: list[tuple[str, float]] = []
    tasks_b.add_end_hook(lambda task: heard.append((task.id, time.monotonic())))
    b.subscribe("task_ended", tasks_b.ended_elsewhere)
    b.start()
    poll(b.feed.listening.is_set, what="the feed listening")
    task = tasks_a.start("spiffe://demo.example/agent/a", "t")
    tasks_a.end(task.id, "spiffe://demo.example/agent/a")
    poll(lambda: heard, what="the end heard on replica b")
    assert heard[0][0] == task.id
    assert tasks_b.get(task.id).state == "ended"


def test_an_approval_decided_on_one_replica_wakes_a_wait_on_another(stores):
    import asyncio

    a, b = stores(), stores()
    broker_a = ApprovalBroker(ApprovalStore(a), _approval_settings())
    broker_b = ApprovalBroker(ApprovalStore(b), _approval_settings())
    b.subscribe("approval", broker_b.heard)
    b.start()
    poll(b.feed.listening.is_set, what="the feed listening")
    approval = _pending(broker_b)

    async def wait_on_b():
        broker_b.bind_loop(asyncio.get_running_loop())
        waiting = asyncio.create_task(broker_b.wait(approval.id, 60))
        await asyncio.sleep(0)  # the wait is registered before the decision
        await asyncio.to_thread(
            broker_a.decide, approval.id, approve=True, approver="local:bob", reason="ok"
        )
        return await waiting

    woken = asyncio.run(wait_on_b())
    assert woken.state == "approved" and woken.decided_by == "local:bob"


def test_the_database_down_fails_state_calls_at_once_and_recovers_by_itself(
    stores, pg_server, caplog
):
    db = stores(retry_interval_s=0.05)
    tasks = TaskRegistry(db, TaskSettings())
    task = tasks.start("spiffe://demo.example/agent/a", "t")
    pg_server.stop()
    try:
        with pytest.raises(StateError) as first:
            tasks.use(task.id, "spiffe://demo.example/agent/a")
        with pytest.raises(StateError, match="unreachable for"):  # no connection attempt
            tasks.use(task.id, "spiffe://demo.example/agent/a")
        assert not db.available
    finally:
        pg_server.start()
    poll(lambda: db.available, what="the store recovering")
    tasks.use(task.id, "spiffe://demo.example/agent/a")
    assert tasks.get(task.id).calls == 1  # the refused calls counted nothing
    text = str(first.value) + caplog.text
    assert pg_server.password not in text
    assert "reachable again" in caplog.text


def test_a_bad_dsn_file_is_refused_without_echoing_it(tmp_path, pg_server):
    from sidecar.state import PostgresSettings

    def open_with(text: str | None):
        path = tmp_path / "dsn"
        if text is not None:
            path.write_text(text)
        elif path.exists():
            path.unlink()
        settings = StateSettings(backend="postgres", postgres=PostgresSettings(dsn_file=path))
        return open_state(settings)

    with pytest.raises(StateError, match="cannot read"):
        open_with(None)
    with pytest.raises(StateError, match="is empty"):
        open_with("  \n")
    with pytest.raises(StateError, match="not a valid libpq") as bad:
        open_with("host=x password='s3cr3t-value")
    assert "s3cr3t" not in str(bad.value)
    wrong = pg_server.dsn().replace(pg_server.password, "wrong-password-123")
    with pytest.raises(StateError, match="password authentication failed") as refused:
        open_with(wrong)
    assert "wrong-password-123" not in str(refused.value)
    assert describe_dsn(pg_server.dsn()) == f"postgresql://127.0.0.1:{pg_server.port}/postgres"


def test_mcp_definition_pins_are_first_seen_fleet_wide_and_accepted_everywhere(stores):
    from sidecar.mcp.pins import PinStore

    a, b = PinStore(stores()), PinStore(stores())
    first = a.pin_new({"notes.search": "sha256:aaa", "notes.read": "sha256:bbb"})
    assert first["notes.search"].hash == "sha256:aaa"
    # Another replica seeing a different definition later does not re-pin it: first seen wins.
    second = b.pin_new({"notes.search": "sha256:evil", "notes.write": "sha256:ccc"})
    assert second["notes.search"].hash == "sha256:aaa"
    assert second["notes.write"].pinned_by == "first-seen"
    b.accept("notes.search", "sha256:new", "local:alice")
    assert a.all()["notes.search"].hash == "sha256:new"
    assert a.all()["notes.search"].pinned_by == "local:alice"


def test_the_password_never_appears_in_what_a_store_says(stores, pg_server, pg_state, caplog):
    db = stores()
    assert pg_server.password not in db.description
    assert db.description.startswith("postgresql://127.0.0.1:")
    with pytest.raises(StateError) as bad:
        db.query("SELECT * FROM no_such_table")
    assert "no_such_table" in str(bad.value) and pg_server.password not in str(bad.value)
    assert db.available  # a bad statement is not an outage


def test_identical_step_ups_racing_on_replicas_share_one_approval_and_one_flood_limit(stores):
    settings = ApprovalSettings(max_pending_per_subject=3, max_new_per_minute=100)
    replicas = [ApprovalBroker(ApprovalStore(stores()), settings) for _ in range(6)]
    start = threading.Barrier(12)

    def ask(i: int) -> str:
        start.wait()
        return _pending(replicas[i % 6], digest="sha256:same").id

    with ThreadPoolExecutor(12) as pool:
        ids = set(pool.map(ask, range(12)))
    assert len(ids) == 1  # twelve identical calls on six replicas: one approval

    def ask_other(i: int) -> str:
        start.wait()
        try:
            return _pending(replicas[i % 6], digest=f"sha256:{i}").id
        except ApprovalError as exc:
            return exc.code

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(ask_other, range(12)))
    # The subject holds at most 3 pending, whichever replicas opened them (1 already).
    assert sum(1 for o in outcomes if o.startswith("ap-")) == 2
    assert outcomes.count("approval_rate_limited") == 10


def test_calls_under_a_task_are_counted_exactly_across_replicas_and_only_for_its_owner(stores):
    from sidecar.tasks import TaskError

    owner = "spiffe://demo.example/agent/a"
    replicas = [TaskRegistry(stores(), TaskSettings()) for _ in range(3)]
    task = replicas[0].start(owner, "count")
    with ThreadPoolExecutor(12) as pool:
        seen = list(pool.map(lambda i: replicas[i % 3].use(task.id, owner).calls, range(60)))
    assert replicas[1].get(task.id).calls == 60
    assert sorted(seen) == list(range(60))  # each call saw the count before it, exactly once
    with pytest.raises(TaskError) as stranger:
        replicas[2].use(task.id, "spiffe://demo.example/agent/other")
    assert stranger.value.code == "task_unknown"
    delegated = replicas[2].use(task.id, "spiffe://demo.example/agent/b", (owner,))
    assert delegated.calls == 60
    replicas[0].end(task.id, owner)
    with pytest.raises(TaskError) as ended:
        replicas[1].use(task.id, owner)
    assert ended.value.code == "task_ended"
    assert replicas[1].get(task.id).calls == 61  # refused calls count nothing
