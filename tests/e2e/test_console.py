"""The approvals console in a real headless Chromium (Debian's, driven by Playwright),
behind an authenticating proxy that follows oauth2-proxy's conventions, over the
PostgreSQL store two sidecar replicas share.

An approver signs in, sees what is pending fleet-wide (with what they need to decide), sees a
new request appear live, approves one and denies another; the agent's calls then go through
once or are refused. Someone outside the approval's approvers is refused and the attempt
audited; identity headers from anywhere but the proxy, forms without the CSRF token and
cross-site posts are refused.

Issue 32 (hardening, round three), each test named after its finding: the user an agent acts
for cannot approve that call (item 4); a loopback process is not the proxy unless it proves
itself, by the shared secret on TCP or by the uid on the unix socket (item 6); bidi and
invisible characters are shown escaped, and error pages carry the security headers (item 7).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from examples.demo.run import free_port
from sidecar.client import SidecarCallError, StepUpRequired
from tests.support.auth_proxy import AuthProxy
from tests.support.fleet import ONCALL, fleet_config, start_replicas
from tests.support.running import AUDIT_PATHS, ROOT

CHROMIUM = Path(os.environ.get("AGENT_SIDECAR_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    if os.environ.get("AGENT_SIDECAR_REQUIRE_CHROMIUM"):  # CI: never skip silently
        raise RuntimeError(f"AGENT_SIDECAR_REQUIRE_CHROMIUM is set, but {CHROMIUM} is missing")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


# The proxy's shared secret on TCP (console.proxy_secret_file); never in a page or a log.
PROXY_SECRET = "console-proxy-secret-7f3a9c1e5b"
SECRET_HEADER = "X-Console-Proxy-Secret"


def _refund(amount: int) -> dict:
    return {"order": "A-1", "amount": amount}


def _start_console(home: Path, config: dict, console: dict) -> tuple[subprocess.Popen, str]:
    config["audit"]["path"] = str(home / "console-audit.log")
    config["console"] = console
    (home / "c.yaml").write_text(yaml.safe_dump(config))
    AUDIT_PATHS.append(home / "console-audit.log")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "console", "--config", str(home / "c.yaml")],
        stdout=subprocess.PIPE, stderr=(home / "console.log").open("wb"), cwd=ROOT, text=True,
    )  # fmt: skip
    address = process.stdout.readline().strip().removeprefix("console on ")
    assert address, (home / "console.log").read_text()
    return process, address


def _stop_console(process: subprocess.Popen) -> None:
    process.terminate()
    assert process.wait(30) == 0


@pytest.fixture
def replicas(tmp_path, tools, pg_state):
    started = start_replicas(tmp_path, 2, lambda home: fleet_config(home, tools.url, pg_state))
    yield started
    for replica in started:
        replica.stop()


@pytest.fixture
def setup(tmp_path, tools, pg_state, replicas):
    """The console on loopback TCP; the proxy proves itself with the shared secret."""
    home = tmp_path / "console"
    home.mkdir()
    (home / "proxy.secret").write_text(PROXY_SECRET + "\n")
    process, address = _start_console(home, fleet_config(home, tools.url, pg_state), {
        "listen": f"127.0.0.1:{free_port()}", "auth": "proxy",
        "trusted_proxies": ["127.0.0.1/32"], "proxy_secret_file": str(home / "proxy.secret"),
    })  # fmt: skip
    proxy = AuthProxy(f"http://{address}", secret=PROXY_SECRET).start()
    yield replicas, proxy, address, home
    _stop_console(process)
    proxy.stop()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _sign_in(browser, proxy: AuthProxy, user: str, groups: str):
    page = browser.new_context().new_page()
    page.goto(proxy.url + "/")
    page.get_by_label("Email").fill(user)
    page.get_by_label("Groups").fill(groups)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#who")
    return page


def _ask(replica, task: str, amount: int) -> str:
    with replica.client() as client, pytest.raises(StepUpRequired) as step_up:
        client.call_tool("payments.refund", _refund(amount), task_id=task, wait=False)
    return step_up.value.approval_id


def _audit(home: Path) -> list[dict]:
    lines = (home / "console-audit.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "approval"]


def test_an_approver_signs_in_approves_and_denies_and_the_fleet_obeys(setup, browser, tools):
    (a, b), proxy, _, home = setup
    with a.client() as client:
        task = client.start_task("refund A-1 for a broken phone").task_id
    first, second = _ask(a, task, 500), _ask(b, task, 700)

    page = _sign_in(browser, proxy, ONCALL, "payments-oncall,eng")
    assert page.locator("#who").inner_text() == f"user:{ONCALL}"
    row = page.locator(f'tr[data-id="{first}"]')
    assert "spiffe://demo.example/agent/support" in row.inner_text()
    assert "payments.refund" in row.inner_text()
    assert "refund A-1 for a broken phone" in row.inner_text()
    assert "pending" in row.inner_text()

    third = _ask(b, task, 900)  # appears without a reload
    page.wait_for_selector(f'tr[data-id="{third}"]', timeout=15_000)

    page.click(f'a[href="/approvals/{first}"]')
    assert '"amount": 500' in page.locator("pre").inner_text()  # log: full for step-ups
    page.get_by_label("Reason (recorded in the audit log)").fill("customer called, verified")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("text=You approved this request.")
    assert page.locator("#state").inner_text() == "approved"
    with b.client() as client:  # used on the other replica, once
        reply = client.call_tool("payments.refund", _refund(500), task_id=task, approval_id=first)
    assert reply.status == 200

    page.goto(proxy.url + f"/approvals/{second}")
    page.get_by_label("Reason (recorded in the audit log)").fill("amount too high")
    page.get_by_role("button", name="Deny").click()
    page.wait_for_selector("text=You denied this request.")
    with a.client() as client, pytest.raises(SidecarCallError) as denied:
        client.call_tool("payments.refund", _refund(700), task_id=task, approval_id=second)
    assert denied.value.code == "approval_denied"

    records = _audit(home)
    decided = {r["approval_id"]: r for r in records if r["event"] in ("approved", "denied")}
    assert decided[first]["actor"] == f"user:{ONCALL}" and decided[first]["via"] == "console"
    assert decided[first]["approval"]["reason"] == "customer called, verified"
    assert decided[second]["event"] == "denied"
    assert sum(1 for r in tools.received if r.path == "/refunds") == 1


def test_someone_not_among_the_approvers_is_refused_and_audited(setup, browser):
    (a, _), proxy, _, home = setup
    with a.client() as client:
        task = client.start_task("refund").task_id
    approval_id = _ask(a, task, 500)
    page = _sign_in(browser, proxy, "mallory@example.com", "eng")
    page.goto(proxy.url + f"/approvals/{approval_id}")
    page.get_by_label("Reason (recorded in the audit log)").fill("looks fine")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("text=not_an_approver")
    assert page.locator("#state").inner_text() == "pending"
    with a.approvals() as approvals:
        assert approvals.get(approval_id).state == "pending"
    refused = [r for r in _audit(home) if r["event"] == "refused"]
    assert refused[-1]["actor"] == "user:mallory@example.com"
    assert refused[-1]["code"] == "not_an_approver"


def _request(address: str, method: str, path: str, *, source: str = "127.0.0.1",
             headers: dict | None = None, body: str = "") -> tuple[int, str]:  # fmt: skip
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    conn.request(method, path, body=body or None, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_identity_headers_count_only_from_the_proxy_and_forms_need_their_token(setup):
    (a, _), _, address, _ = setup
    forged = {"X-Forwarded-Email": ONCALL, "X-Forwarded-Groups": "payments-oncall",
              SECRET_HEADER: PROXY_SECRET}  # as the proxy sends them  # fmt: skip
    status, text = _request(address, "GET", "/", source="127.0.0.3", headers=forged)
    assert status == 403 and "not a trusted proxy" in text
    # The proxy (its address and secret), no user: not signed in.
    status, _ = _request(address, "GET", "/", headers={SECRET_HEADER: PROXY_SECRET})
    assert status == 401
    assert _request(address, "GET", "/healthz") == (200, "ok\n")

    with a.client() as client:
        task = client.start_task("refund").task_id
    approval_id = _ask(a, task, 500)
    form = {"Content-Type": "application/x-www-form-urlencoded"} | forged
    status, text = _request(address, "POST", f"/approvals/{approval_id}/decide", headers=form,
                            body="decision=approve&reason=x&csrf=forged")  # fmt: skip
    assert status == 403 and "stale" in text
    status, page = _request(address, "GET", f"/approvals/{approval_id}", headers=forged)
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    cross = form | {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    status, text = _request(address, "POST", f"/approvals/{approval_id}/decide", headers=cross,
                            body=f"decision=approve&reason=x&csrf={token}")  # fmt: skip
    assert status == 403 and "cross-site" in text
    with a.approvals() as approvals:
        assert approvals.get(approval_id).state == "pending"
    same = form | {"Origin": f"http://{address}"}
    status, _ = _request(address, "POST", f"/approvals/{approval_id}/decide", headers=same,
                         body=f"decision=approve&reason=checked&csrf={token}")  # fmt: skip
    assert status == 303
    with a.approvals() as approvals:
        assert approvals.get(approval_id).state == "approved"
    assert urlsplit(f"http://{address}").port


# --- issue 32, item 4: self-approval through the user ------------------------------------


@pytest.fixture
def acting(tmp_path, tools, pg_state, authority):
    """One replica that verifies user tokens (the agent acts for people), and the console."""
    from tests.support.oauth_server import AuthorizationServer

    idp = AuthorizationServer(tmp_path, spiffe=authority, clients={}).start()

    def config(home: Path) -> dict:
        raw = fleet_config(home, tools.url, pg_state)
        raw["users"] = {"issuers": {"corp": {"issuer": idp.issuer, "audiences": ["agent-app"],
                                             "ca_file": str(idp.ca_file)}}}  # fmt: skip
        return raw

    [replica] = start_replicas(tmp_path, 1, config)
    home = tmp_path / "console"
    home.mkdir()
    (home / "proxy.secret").write_text(PROXY_SECRET)
    process, address = _start_console(home, fleet_config(home, tools.url, pg_state), {
        "listen": f"127.0.0.1:{free_port()}", "proxy_secret_file": str(home / "proxy.secret"),
    })  # fmt: skip
    proxy = AuthProxy(f"http://{address}", secret=PROXY_SECRET).start()
    yield replica, idp, proxy, home
    _stop_console(process)
    proxy.stop()
    replica.stop()
    idp.stop()


def test_item4_the_user_an_agent_acts_for_cannot_approve_its_call(acting, browser):
    replica, idp, proxy, home = acting
    token = idp.user_token("boss@example.com")
    with replica.client() as client:
        task = client.start_task("refund for the boss").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", _refund(500), task_id=task, wait=False,
                             user_token=token)  # fmt: skip
    approval_id = step_up.value.approval_id

    # In the browser: boss signs in (in the approvers' group, too) and tries to approve.
    page = _sign_in(browser, proxy, "boss@example.com", "payments-oncall")
    page.goto(proxy.url + f"/approvals/{approval_id}")
    assert "boss@example.com" in page.locator("#user").inner_text()  # shown: on behalf of
    page.get_by_label("Reason (recorded in the audit log)").fill("it is my own refund")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("text=self_approval")
    assert "is the user this request acts for" in page.locator("[role=alert]").inner_text()
    assert page.locator("#state").inner_text() == "pending"

    # The admin API (the CLI's path): the same name, in any case, is refused the same way.
    from sidecar.approvals.client import AdminCallError

    for name in ("boss@example.com", "BOSS@Example.COM"):
        with replica.approvals(name) as approvals, pytest.raises(AdminCallError) as refused:
            approvals.approve(approval_id, reason="mine")
        assert refused.value.status.name == "PERMISSION_DENIED"
        assert "self_approval" in str(refused.value)
    with replica.approvals() as approvals:
        assert approvals.get(approval_id).state == "pending"
        # Someone else may: the rule refuses the party to the request, not the request.
        assert approvals.approve(approval_id, reason="checked with finance").state == "approved"
    refused_records = [r for r in _audit(home) if r["event"] == "refused"]
    assert refused_records[-1]["code"] == "self_approval"
    assert refused_records[-1]["actor"] == "user:boss@example.com"
    assert refused_records[-1]["approval"]["user"]["sub"] == "boss@example.com"
    with replica.client() as client:  # the call then goes through, for the boss, once
        reply = client.call_tool("payments.refund", _refund(500), task_id=task,
                                 approval_id=approval_id, user_token=token)  # fmt: skip
    assert reply.status == 200


def test_item1_an_opaque_sub_does_not_let_the_user_approve_by_email(acting, browser):
    """Most IdPs issue an opaque ``sub``: the console's approver (X-Forwarded-Email) is matched
    against the token's ``email`` and ``preferred_username`` too, verified or not."""
    replica, idp, proxy, home = acting
    token = idp.user_token("00u8f3k2JqZ9xQ1a4h7", email="boss@example.com",
                           email_verified=False, preferred_username="bossman")  # fmt: skip
    with replica.client() as client:
        task = client.start_task("refund for the boss, opaque sub").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", _refund(700), task_id=task, wait=False,
                             user_token=token)  # fmt: skip
    approval_id = step_up.value.approval_id

    page = _sign_in(browser, proxy, "Boss@Example.com", "payments-oncall")
    page.goto(proxy.url + f"/approvals/{approval_id}")
    shown = page.locator("#user").inner_text()
    assert "boss@example.com" in shown and "00u8f3k2JqZ9xQ1a4h7" in shown
    page.get_by_label("Reason (recorded in the audit log)").fill("it is my own refund")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("text=self_approval")
    assert "is the user this request acts for" in page.locator("[role=alert]").inner_text()
    assert page.locator("#state").inner_text() == "pending"

    from sidecar.approvals.client import AdminCallError

    for name in ("bossman", "BOSS@example.com"):  # preferred_username, e-mail: the socket
        with replica.approvals(name) as approvals, pytest.raises(AdminCallError) as refused:
            approvals.approve(approval_id, reason="mine")
        assert "self_approval" in str(refused.value)
    refused_records = [r for r in _audit(home) if r["event"] == "refused"]
    assert refused_records[-1]["code"] == "self_approval"
    assert refused_records[-1]["approval"]["user"] == {
        "sub": "00u8f3k2JqZ9xQ1a4h7", "iss": idp.issuer, "email": "boss@example.com",
        "preferred_username": "bossman",
    }  # fmt: skip
    with replica.approvals() as approvals:  # someone else may
        assert approvals.get(approval_id).state == "pending"
        assert approvals.approve(approval_id, reason="checked").state == "approved"
    for path in home.parent.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert token.encode() not in path.read_bytes(), f"the user token is in {path}"


# --- issue 32, item 6: the proxy proves itself --------------------------------------------


def test_item6_a_loopback_process_without_the_proxy_secret_cannot_approve(setup):
    (a, _), _, address, home = setup
    with a.client() as client:
        task = client.start_task("refund").task_id
    approval_id = _ask(a, task, 500)
    forged = {"X-Forwarded-Email": ONCALL, "X-Forwarded-Groups": "payments-oncall"}
    for secret in (None, "", "wrong-secret-of-some-length", PROXY_SECRET[:-1], PROXY_SECRET + "x",
                   "\u202e" + PROXY_SECRET, "x" * 8000):  # fmt: skip
        headers = forged | ({SECRET_HEADER: secret} if secret is not None else {})
        try:
            status, text = _request(address, "GET", f"/approvals/{approval_id}", headers=headers)
        except UnicodeEncodeError:
            continue  # http.client refuses a non-Latin-1 header: it never leaves
        assert status == 403, secret
        assert "does not carry the proxy" in text and PROXY_SECRET not in text
    form = {"Content-Type": "application/x-www-form-urlencoded"} | forged
    status, _ = _request(address, "POST", f"/approvals/{approval_id}/decide", headers=form,
                         body="decision=approve&reason=x&csrf=x")  # fmt: skip
    assert status == 403
    with a.approvals() as approvals:
        assert approvals.get(approval_id).state == "pending"
    status, _ = _request(address, "GET", "/", headers=forged | {SECRET_HEADER: PROXY_SECRET})
    assert status == 200  # the proxy (address and secret) is believed
    assert PROXY_SECRET not in (home / "console.log").read_text()
    assert PROXY_SECRET not in (home / "console-audit.log").read_text()


def test_item6_a_console_whose_proxy_cannot_prove_itself_does_not_start(tmp_path, tools,
                                                                        pg_state):  # fmt: skip
    config = fleet_config(tmp_path, tools.url, pg_state)
    config["console"] = {"listen": f"127.0.0.1:{free_port()}", "auth": "proxy"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "console", "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "any local process could send X-Forwarded-Email" in done.stderr


# Run as another user, the probe needs an interpreter that user may execute (the venv's may
# sit under root's home); it uses the standard library only.
SYSTEM_PYTHON = "/usr/bin/python3"


def _unix_get(socket_path: str, path: str, headers: dict, *, user: int, group: int) -> str:
    """A GET over the console's socket from another process running as ``user``:``group``:
    its HTTP status, or the error connecting."""
    script = (
        "import http.client, json, socket, sys\n"
        "c = http.client.HTTPConnection('console.local')\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except OSError as e:\n"
        "    print(type(e).__name__); sys.exit()\n"
        "c.sock = s\n"
        "c.request('GET', sys.argv[2], headers=json.loads(sys.argv[3]))\n"
        "r = c.getresponse(); print(r.status, r.read().decode()[:2000])\n"
    )
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", script, socket_path, path, json.dumps(headers)],
        capture_output=True, text=True, timeout=60, user=user, group=group, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="starts processes as other users",
)
def test_item6_on_a_unix_socket_only_the_proxy_uid_is_believed(replicas, tmp_path, tools,
                                                               pg_state, browser):  # fmt: skip
    a, _ = replicas
    home = tmp_path / "console"
    home.mkdir()
    # Beside the test's own (0700) directory: a directory other users can traverse, so that
    # only the socket's mode and the uid check keep them out.
    run = Path(tempfile.mkdtemp(prefix="console-"))
    run.chmod(0o755)
    socket_path = run / "console.sock"
    process, address = _start_console(home, fleet_config(home, tools.url, pg_state), {
        "listen": f"unix://{socket_path}", "socket_mode": "0660", "proxy_uids": [os.getuid()],
    })  # fmt: skip
    proxy = AuthProxy(f"unix:{socket_path}").start()
    try:
        assert address == f"unix:{socket_path}"
        assert oct(socket_path.stat().st_mode & 0o777) == "0o660"
        with a.client() as client:
            task = client.start_task("refund over the socket").task_id
        approval_id = _ask(a, task, 500)
        page = _sign_in(browser, proxy, ONCALL, "payments-oncall")  # the proxy: believed
        page.goto(proxy.url + f"/approvals/{approval_id}")
        page.get_by_label("Reason (recorded in the audit log)").fill("verified")
        page.get_by_role("button", name="Approve").click()
        page.wait_for_selector("text=You approved this request.")

        forged = {"X-Forwarded-Email": ONCALL, "X-Forwarded-Groups": "payments-oncall"}
        # In the socket's group but not the proxy's uid: the kernel names it, it is refused.
        answer = _unix_get(str(socket_path), "/", forged, user=65534, group=os.getgid())
        assert answer.startswith("403") and "not the proxy" in answer
        # Neither the proxy's uid nor its group: the socket's mode keeps it out.
        assert _unix_get(str(socket_path), "/", forged, user=65534, group=65534) == (
            "PermissionError"
        )
    finally:
        _stop_console(process)
        proxy.stop()
        shutil.rmtree(run, ignore_errors=True)


# --- issue 32, item 7: what the approver reads is the real call ---------------------------

RLO = "\u202e"


def test_item7_bidi_and_invisible_characters_are_shown_escaped(setup, browser):
    (a, _), proxy, _, home = setup
    with a.client() as client:
        task = client.start_task(f"refund {RLO}001 ot{RLO}\u200b").task_id
        with pytest.raises(StepUpRequired) as step_up:
            client.call_tool("payments.refund", {"order": f"A-1{RLO}0001", "amount": 500,
                             "no\u2066te": "x\u00a0y"}, task_id=task, wait=False)  # fmt: skip
    approval_id = step_up.value.approval_id
    # A tool name as hostile as a name can be, straight into the shared store.
    from sidecar.approvals import ApprovalBroker, ApprovalStore
    from sidecar.config import ApprovalSettings, load_settings
    from sidecar.state import open_state

    state = open_state(load_settings(home / "c.yaml").state)
    try:
        hostile = ApprovalBroker(ApprovalStore(state), ApprovalSettings()).request(
            digest="sha256:" + "0" * 64, subject=f"spiffe://demo.example/agent/{RLO}x",
            delegation=(), action={"kind": "tool", "name": f"payments.{RLO}dnufer",
            "operation": "act", "target": "payments"}, arguments={"log": "full", "value": {}},
            task_id="", reasons=(f"why{RLO}",), approvers=("group:payments-oncall",),
            ttl_s=300, policy_revision="r", decision_id="d",
        )  # fmt: skip
    finally:
        state.close()

    page = _sign_in(browser, proxy, ONCALL, "payments-oncall")
    page.wait_for_selector(f'tr[data-id="{hostile.id}"]')
    html = page.content()
    for raw in (RLO, "\u200b", "\u2066", "\u00a0"):
        assert raw not in html, hex(ord(raw))
    row = page.locator(f'tr[data-id="{hostile.id}"]').inner_text()
    assert "payments.\\u202ednufer" in row and "agent/\\u202ex" in row
    intent = page.locator(f'tr[data-id="{approval_id}"]').inner_text()
    assert "\\u202e001 ot\\u202e\\u200b" in intent
    marks = page.locator("mark.esc")
    assert marks.count() >= 4 and marks.first.get_attribute("title") == "RIGHT-TO-LEFT OVERRIDE"

    page.goto(proxy.url + f"/approvals/{approval_id}")
    shown = page.locator("pre").inner_text()
    assert "A-1\\u202e0001" in shown and "no\\u2066te" in shown and "x\\u00a0y" in shown
    assert RLO not in page.content()


def test_item7_error_pages_carry_the_security_headers(setup):
    _, _, address, _ = setup
    host, port = address.rsplit(":", 1)
    proxy_headers = {SECRET_HEADER: PROXY_SECRET, "X-Forwarded-Email": ONCALL}
    cases = [
        ("GET", "/no/such/page", proxy_headers, "", 404),
        ("GET", "/static/nothing.js", {}, "", 404),
        ("DELETE", "/", proxy_headers, "", 405),
        ("GET", "/approvals/ap-unknown", proxy_headers, "", 404),
        ("GET", "/", {}, "", 403),
        ("POST", "/approvals/ap-x/decide", proxy_headers
         | {"Content-Type": "application/x-www-form-urlencoded"}, "x=" + "a" * 100_000, 413),
    ]  # fmt: skip
    for method, path, headers, body, expected in cases:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        assert response.status == expected, (method, path, response.status)
        csp = response.getheader("Content-Security-Policy") or ""
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert response.getheader("Cache-Control") == "no-store", path
        assert response.getheader("X-Frame-Options") == "DENY", path
        assert response.getheader("X-Content-Type-Options") == "nosniff", path
        assert text.startswith("<!doctype html>"), path


# --- review of issue 32, item 3: a console never takes over a live socket -----------------


def _unix_status(socket_path: Path) -> int:
    """GET / over the console's unix socket, as the proxy (this uid): the HTTP status."""
    import socket

    conn = http.client.HTTPConnection("console.local", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(10)
    conn.sock.connect(str(socket_path))
    conn.request("GET", "/", headers={"X-Forwarded-Email": ONCALL,
                                      "X-Forwarded-Groups": "payments-oncall"})  # fmt: skip
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def _console_on(home: Path, tools, pg_state, socket_path: Path) -> Path:
    home.mkdir()
    config = fleet_config(home, tools.url, pg_state)
    config["audit"]["path"] = str(home / "console-audit.log")
    AUDIT_PATHS.append(home / "console-audit.log")
    config["console"] = {"listen": f"unix://{socket_path}", "proxy_uids": [os.getuid()]}
    (home / "c.yaml").write_text(yaml.safe_dump(config))
    return home / "c.yaml"


def _run_console(config: Path) -> subprocess.CompletedProcess:
    """A console that should refuse to start. If it starts instead (it took the socket
    over), it is stopped and the test fails at once."""
    errors = config.with_name("console.log")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "console", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=errors.open("wb"), cwd=ROOT, text=True,
    )  # fmt: skip
    started = process.stdout.readline().strip()  # "" once it exits
    if started:
        _stop_console(process)
        pytest.fail(f"a second console started on a live socket: {started}")
    process.wait(60)
    return subprocess.CompletedProcess(process.args, process.returncode, "", errors.read_text())


def test_item3_a_second_console_never_takes_over_a_live_console_socket(tmp_path, tools, pg_state):
    import socket

    run = Path(tempfile.mkdtemp(prefix="console-"))  # short: unix socket paths are bounded
    socket_path = run / "console.sock"
    try:
        one = _console_on(tmp_path / "one", tools, pg_state, socket_path)
        first = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "console", "--config", str(one)],
            stdout=subprocess.PIPE, stderr=(tmp_path / "one.log").open("wb"), cwd=ROOT, text=True,
        )  # fmt: skip
        address = first.stdout.readline().strip()
        assert address == f"console on unix:{socket_path}", (tmp_path / "one.log").read_text()
        assert _unix_status(socket_path) == 200
        inode = socket_path.stat().st_ino

        # A second console on the same socket is refused, naming the setting ...
        second = _run_console(_console_on(tmp_path / "two", tools, pg_state, socket_path))
        assert second.returncode != 0
        assert "console.listen" in second.stderr and str(socket_path) in second.stderr
        assert "Traceback" not in second.stderr
        # ... and the first still owns it: same file, still answering.
        assert socket_path.stat().st_ino == inode and _unix_status(socket_path) == 200
        _stop_console(first)

        # A live process that is no sidecar (no lock held) is not replaced either.
        squatter = socket.socket(socket.AF_UNIX)
        socket_path.unlink(missing_ok=True)  # the first console's file, now stale
        squatter.bind(str(socket_path))
        squatter.listen(4)
        try:
            third = _run_console(_console_on(tmp_path / "three", tools, pg_state, socket_path))
            assert third.returncode != 0 and "live process" in third.stderr, third.stderr
            assert socket_path.is_socket()
        finally:
            squatter.close()

        # A stale socket file (nobody listening) is replaced: a restart is never blocked.
        assert socket_path.is_socket()
        four = _console_on(tmp_path / "four", tools, pg_state, socket_path)
        fourth = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "console", "--config", str(four)],
            stdout=subprocess.PIPE, stderr=(tmp_path / "four.log").open("wb"), cwd=ROOT, text=True,
        )  # fmt: skip
        try:
            assert fourth.stdout.readline().strip() == f"console on unix:{socket_path}"
            assert _unix_status(socket_path) == 200
        finally:
            _stop_console(fourth)
    finally:
        shutil.rmtree(run, ignore_errors=True)
