"""The approvals console with ``console.auth: mtls`` over the embedded SQLite store: the
approver is the SPIFFE ID of a client certificate from the configured CA; no certificate, or
one from another CA, gets no TLS session. Live updates on SQLite come from re-reading the
store (no change feed there)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

import pytest
import requests

from sidecar.client import StepUpRequired
from sidecar.config import Settings
from sidecar.console.server import ConsoleServer
from sidecar.identity.dev_authority import DevAuthority
from tests.support.running import APPROVER

REFUND = {"order": "A-1", "amount": 500}


class _Console:
    """A ConsoleServer on its own loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = self._run(self._build(settings))

    async def _build(self, settings: Settings) -> ConsoleServer:
        server = ConsoleServer(settings)
        await server.start()
        return server

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self._run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _pem(tmp_path: Path, name: str, issued) -> tuple[str, str]:
    (tmp_path / f"{name}.crt").write_bytes(issued.chain_pem)
    (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
    return str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key")


@pytest.fixture
def mtls_console(start_sidecar, tools, tmp_path, authority):
    running = start_sidecar(tools.url)
    cert, key = _pem(tmp_path, "console", authority.issue_x509(
        "spiffe://demo.example/agent-sidecar/console", dns_names=("localhost",)))  # fmt: skip
    (tmp_path / "ca.pem").write_bytes(authority.x509_bundle_pem)
    console = dataclasses.replace(
        running.settings.console, listen="127.0.0.1:0", auth="mtls", tls_cert_file=Path(cert),
        tls_key_file=Path(key), client_ca_file=tmp_path / "ca.pem",
    )  # fmt: skip
    settings = dataclasses.replace(
        running.settings,
        console=console,
        audit=dataclasses.replace(running.settings.audit, path=tmp_path / "console-audit.log"),
    )
    served = _Console(settings)
    yield running, served.server.address, tmp_path
    served.stop()


def _session(tmp_path: Path, cert: tuple[str, str] | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the CA below
    session.verify = str(tmp_path / "ca.pem")
    session.cert = cert
    return session


def _url(address: str, path: str) -> str:
    return f"https://localhost:{address.rsplit(':', 1)[1]}{path}"


def _step_up(running) -> tuple[str, str]:
    """A task and a pending approval for a refund under it."""
    with running.client() as client:
        task = client.start_task("refund").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", REFUND, task_id=task, wait=False)
    return task, step_up.value.approval_id


def _alice(tmp_path: Path, authority) -> requests.Session:
    return _session(tmp_path, _pem(tmp_path, "alice", authority.issue_x509(APPROVER)))


def test_a_client_certificate_names_the_approver_who_then_decides(mtls_console, authority):
    running, address, tmp_path = mtls_console
    task, approval_id = _step_up(running)
    alice = _alice(tmp_path, authority)
    page = alice.get(_url(address, "/"), timeout=10)
    assert page.status_code == 200 and f'Signed in as <b id="who">{APPROVER}</b>' in page.text
    assert approval_id in page.text
    detail = alice.get(_url(address, f"/approvals/{approval_id}"), timeout=10).text
    token = detail.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    decided = alice.post(
        _url(address, f"/approvals/{approval_id}/decide"),
        data={"decision": "approve", "reason": "verified", "csrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert decided.status_code == 303
    with running.client() as client:
        reply = client.call_tool("payments.refund", REFUND, task_id=task, approval_id=approval_id)
    assert reply.status == 200
    with running.approvals() as approvals:
        assert approvals.get(approval_id).decided_by == APPROVER


def test_no_certificate_or_another_cas_gets_no_session(mtls_console):
    _, address, tmp_path = mtls_console
    # TLS 1.3 refuses the missing certificate after the handshake: a closed connection.
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one too
        _session(tmp_path, None).get(_url(address, "/"), timeout=10)
    stranger = DevAuthority("demo.example")
    cert = _pem(tmp_path, "stranger", stranger.issue_x509(APPROVER))
    with pytest.raises(requests.exceptions.ConnectionError):
        _session(tmp_path, cert).get(_url(address, "/"), timeout=10)


def test_on_sqlite_a_new_approval_reaches_an_open_page_live(mtls_console, authority):
    running, address, tmp_path = mtls_console
    alice = _session(tmp_path, _pem(tmp_path, "alice", authority.issue_x509(APPROVER)))
    with alice.get(_url(address, "/events"), stream=True, timeout=30) as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        with running.client() as client:
            task = client.start_task("refund").task_id
            with pytest.raises(StepUpRequired) as step_up:
                client.call_tool("payments.refund", REFUND, task_id=task, wait=False)
        for line in events.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and step_up.value.approval_id in line:
                assert '"event": "created"' in line
                break


def test_bad_decisions_get_clear_answers_and_change_nothing(mtls_console, authority):
    running, address, tmp_path = mtls_console
    _, approval_id = _step_up(running)
    alice = _alice(tmp_path, authority)
    detail = alice.get(_url(address, f"/approvals/{approval_id}"), timeout=10).text
    token = detail.split('name="csrf" value="', 1)[1].split('"', 1)[0]

    def post(approval: str, **form) -> requests.Response:
        return alice.post(
            _url(address, f"/approvals/{approval}/decide"),
            data={"csrf": token} | form,
            allow_redirects=False,
            timeout=10,
        )

    assert post(approval_id, decision="maybe", reason="x").status_code == 400
    blank = post(approval_id, decision="approve", reason="   ")
    assert blank.status_code == 400 and "reason_required" in blank.text
    unknown = post("ap-does-not-exist", decision="approve", reason="x")
    assert unknown.status_code == 404 and "no such approval" in unknown.text
    huge = post(approval_id, decision="approve", reason="x" * 100_000)
    assert huge.status_code == 413  # the form is bounded before it is read
    assert alice.get(_url(address, "/approvals/nope"), timeout=10).status_code == 404
    with running.approvals() as approvals:
        assert approvals.get(approval_id).state == "pending"
    approved = post(approval_id, decision="approve", reason="ok")
    assert approved.status_code == 303
    again = post(approval_id, decision="deny", reason="changed my mind")
    assert again.status_code == 409 and "not_pending" in again.text


# --- issue 32, item 5: the console's audit log is signed with its SVID ---------------------

CONSOLE_ID = "spiffe://demo.example/agent-sidecar/console"


def _console_settings(running, tmp_path: Path, authority, **identity) -> Settings:
    cert, key = _pem(
        tmp_path, "console", authority.issue_x509(CONSOLE_ID, dns_names=("localhost",))
    )
    (tmp_path / "ca.pem").write_bytes(authority.x509_bundle_pem)
    console = dataclasses.replace(
        running.settings.console, listen="127.0.0.1:0", auth="mtls", tls_cert_file=Path(cert),
        tls_key_file=Path(key), client_ca_file=tmp_path / "ca.pem",
    )  # fmt: skip
    (tmp_path / "console").mkdir(exist_ok=True)  # its own directory: the sidecar's key is not
    audit = dataclasses.replace(
        running.settings.audit, path=tmp_path / "console" / "console-audit.log", signing_key=None
    )
    return dataclasses.replace(
        running.settings,
        console=console,
        audit=audit,
        identity=dataclasses.replace(running.settings.identity, **identity),
    )


def _approve_in(served: _Console, running, tmp_path: Path, authority) -> None:
    """An approver decides one approval in the console: an audit record it must sign."""
    _, approval_id = _step_up(running)
    alice = _alice(tmp_path, authority)
    address = served.server.address
    detail = alice.get(_url(address, f"/approvals/{approval_id}"), timeout=10).text
    token = detail.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    decided = alice.post(
        _url(address, f"/approvals/{approval_id}/decide"),
        data={"decision": "approve", "reason": "verified", "csrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert decided.status_code == 303


def test_item5_the_console_signs_its_audit_with_its_svid_so_verify_bundle_covers_it(
    start_sidecar, tools, tmp_path, authority
):
    from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
    from tests.support.cli import cli

    running = start_sidecar(tools.url)
    with DevWorkloadApiServer(DevWorkloadApi(authority, CONSOLE_ID), tmp_path / "wl.sock") as api:
        settings = _console_settings(running, tmp_path, authority, socket=api.address)
        served = _Console(settings)
        _approve_in(served, running, tmp_path, authority)
        served.stop()  # a clean stop seals the log
    log = tmp_path / "console" / "console-audit.log"
    assert not (
        tmp_path / "console" / "audit-signing.key"
    ).exists()  # no key of its own beside the log
    checkpoints = [json.loads(line) for line in log.read_text().splitlines()]
    checkpoints = [c for c in checkpoints if c.get("type") == "checkpoint"]
    assert checkpoints and {c["signer"] for c in checkpoints} == {CONSOLE_ID}
    done = cli("audit", "verify", str(log), "--bundle", str(tmp_path / "ca.pem"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(": intact")
    # A bundle of another trust domain does not vouch for it.
    (tmp_path / "other.pem").write_bytes(DevAuthority("other.example").x509_bundle_pem)
    other = cli("audit", "verify", str(log), "--bundle", str(tmp_path / "other.pem"))
    assert other.returncode == 1 and "NOT intact" in other.stdout


def test_item5_without_a_workload_api_verify_says_which_trust_the_log_claims(
    start_sidecar, tools, tmp_path, authority
):
    from tests.support.cli import cli

    running = start_sidecar(tools.url)  # identity static, no socket: a key file signs
    served = _Console(_console_settings(running, tmp_path, authority))
    _approve_in(served, running, tmp_path, authority)
    served.stop()
    log = tmp_path / "console" / "console-audit.log"
    done = cli("audit", "verify", str(log), "--bundle", str(tmp_path / "ca.pem"))
    assert done.returncode == 1
    assert "signed with a key file" in done.stdout and "pass that key with --key" in done.stdout


def test_item5_a_console_without_its_svid_does_not_start(
    start_sidecar, tools, tmp_path, authority, monkeypatch
):
    from sidecar.console import signing
    from sidecar.errors import SidecarError

    monkeypatch.setattr(signing, "SVID_READY_TIMEOUT_S", 0.5)
    running = start_sidecar(tools.url)
    settings = _console_settings(
        running, tmp_path, authority, socket=f"unix://{tmp_path}/no-such-workload-api.sock"
    )
    with pytest.raises(SidecarError, match=r"no X\.509-SVID from the Workload API"):
        _Console(settings)
