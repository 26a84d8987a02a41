"""Shared fixtures: a real tool upstream, and real sidecars serving gRPC on loopback."""

from __future__ import annotations

import fcntl
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo.model_server import ModelServer  # noqa: E402
from examples.demo.tools_server import Reply, ToolServer  # noqa: E402
from sidecar.identity.dev_authority import DevAuthority  # noqa: E402
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer  # noqa: E402
from sidecar.logs import JsonFormatter  # noqa: E402
from tests.support.running import AUDIT_PATHS, RunningSidecar, sidecar_settings  # noqa: E402

REGO = ROOT / "rego"
SECRET_PATTERNS = {
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_or_audit_record():
    """Every log record (at DEBUG) and every audit line of the whole suite is scanned for
    tokens and private keys; finding one fails the run."""
    collector = _Collect()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(collector)
    root.setLevel(previous)
    sources = [("log", line) for line in collector.lines]
    for path in AUDIT_PATHS:
        if path.exists() and path.is_file():
            sources += [(str(path), line) for line in path.read_text().splitlines()]
    found = [
        f"{kind} in {where}: {text[:120]}"
        for where, text in sources
        for kind, pattern in SECRET_PATTERNS.items()
        if pattern.search(text)
    ]
    if found:
        pytest.fail("secrets were written:\n" + "\n".join(found[:10]), pytrace=False)


@pytest.fixture(autouse=True)
def _host_resource_lock(request) -> Iterator[None]:
    """Tests marked ``host_resource("NAME")`` share something of the host (``./demo-out``, the
    demo's fixed ports): under pytest-xdist they take turns on an flock, whatever worker runs
    them (``--dist load`` survives a crashed worker; ``loadgroup`` in xdist 3.8 does not)."""
    marker = request.node.get_closest_marker("host_resource")
    if marker is None:
        yield
        return
    lock = Path("/tmp") / f"agent-sidecar-tests-{marker.args[0]}.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


@pytest.fixture
def authority() -> DevAuthority:
    """A development SPIFFE authority (CA + JWT key) for trust domain demo.example."""
    return DevAuthority("demo.example")


@pytest.fixture
def tools() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


@pytest.fixture
def models() -> Iterator[ModelServer]:
    """The scripted OpenAI-compatible provider (examples/demo/model_server.py)."""
    with ModelServer() as server:
        yield server


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., RunningSidecar]]:
    """Start a sidecar from settings overrides; all are stopped at the end of the test."""
    started: list[RunningSidecar] = []

    def start(tools_url: str, **overrides: Any) -> RunningSidecar:
        settings = sidecar_settings(tmp_path, tools_url, **overrides)
        running = RunningSidecar(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# jwt identity mode: the sidecar's own SVID, and the audience agents' JWT-SVIDs must carry.
SIDECAR_ID = "spiffe://demo.example/ns/agents/sa/support-sidecar"
SIDECAR_AUDIENCE = "spiffe://demo.example/agent-sidecar"
SIDECAR_SERVER_NAME = "agent-sidecar"  # a DNS SAN of the sidecar's SVID, for mTLS clients


@pytest.fixture
def start_jwt_sidecar(start_sidecar, tools, authority, tmp_path) -> Iterator[Any]:
    """Start sidecars in identity mode ``jwt`` from overrides: a development Workload API
    (``authority``) issues the sidecar's SVID; agents present JWT-SVIDs for SIDECAR_AUDIENCE."""
    api = DevWorkloadApiServer(
        DevWorkloadApi(authority, SIDECAR_ID, dns_names=(SIDECAR_SERVER_NAME,)),
        tmp_path / "wl.sock",
    ).start()

    def start(**overrides: Any) -> RunningSidecar:
        identity = {"mode": "jwt", "socket": f"unix://{api.socket_path}"}
        running = start_sidecar(
            tools.url, identity=identity | {"audience": SIDECAR_AUDIENCE}, **overrides
        )
        assert running.sidecar.identity.wait_ready(10)
        return running

    yield start
    api.stop()


@pytest.fixture
def sidecar(start_sidecar, tools) -> RunningSidecar:
    return start_sidecar(tools.url)


@pytest.fixture
def task(sidecar) -> str:
    """A task started on ``sidecar`` (act calls need one under the baseline policy)."""
    with sidecar.client() as client:
        return client.start_task("test").task_id


@pytest.fixture
def workload_api(authority, tmp_path):
    """A development Workload API serving the agent's (spiffe://demo.example/agent/support)
    X.509- and JWT-SVIDs on a unix socket."""
    server = DevWorkloadApiServer(
        DevWorkloadApi(authority, "spiffe://demo.example/agent/support"), tmp_path / "wl.sock"
    ).start()
    yield server
    server.stop()


def audit_lines(path: Path, type: str = "call") -> list[dict[str, Any]]:
    """The call records of an audit log (one per call), without intents, checkpoints, task
    and approval records (or those of another ``type``)."""
    return [r for r in all_audit_lines(path) if r["type"] == type]


def all_audit_lines(path: Path) -> list[dict[str, Any]]:
    # "\n" only, as the sidecar writes them: a record may hold U+2028 in its text.
    return [json.loads(line) for line in path.read_text().split("\n") if line]


__all__ = ["REGO", "Reply", "all_audit_lines", "audit_lines"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session (each test gets its own database)."""
    import os

    from tests.support.postgres import PostgresServer, missing_reason

    why = missing_reason()
    if why:
        if os.environ.get("AGENT_SIDECAR_REQUIRE_POSTGRES"):  # CI: never skip silently
            raise RuntimeError(f"AGENT_SIDECAR_REQUIRE_POSTGRES is set, but {why}")
        pytest.skip(why)
    server = PostgresServer().start()
    # Its password must never reach a log line or an audit record.
    SECRET_PATTERNS["PostgreSQL password"] = re.compile(re.escape(server.password))
    yield server
    server.close()


@pytest.fixture
def pg_state(pg_server, tmp_path, request) -> dict[str, Any]:
    """``state`` settings for a fresh database on ``pg_server`` (the DSN in a 0600 file)."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name += "_" + format(abs(hash(str(tmp_path))) % 10**8, "d")
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(pg_server.create_database(name) + "\n")
    dsn_file.chmod(0o600)
    return {"backend": "postgres", "postgres": {"dsn_file": str(dsn_file)}}
