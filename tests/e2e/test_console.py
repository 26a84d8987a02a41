"""The approvals console in a real headless Chromium (Debian's, driven by Playwright),
behind an authenticating proxy that follows oauth2-proxy's conventions, over the
PostgreSQL store two sidecar replicas share.

An approver signs in, sees what is pending fleet-wide (with what they need to decide), sees a
new request appear live, approves one and denies another; the agent's calls then go through
once or are refused. Someone outside the approval's approvers is refused and the attempt
audited; identity headers from anywhere but the proxy, forms without the CSRF token and
cross-site posts are refused.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
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


def _refund(amount: int) -> dict:
    return {"order": "A-1", "amount": amount}


@pytest.fixture
def setup(tmp_path, tools, pg_state):
    replicas = start_replicas(tmp_path, 2, lambda home: fleet_config(home, tools.url, pg_state))
    home = tmp_path / "console"
    home.mkdir()
    config = fleet_config(home, tools.url, pg_state)
    config["audit"]["path"] = str(home / "console-audit.log")
    config["console"] = {"listen": f"127.0.0.1:{free_port()}", "auth": "proxy",
                         "trusted_proxies": ["127.0.0.1/32"]}  # fmt: skip
    (home / "c.yaml").write_text(yaml.safe_dump(config))
    AUDIT_PATHS.append(home / "console-audit.log")
    console = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "console", "--config", str(home / "c.yaml")],
        stdout=subprocess.PIPE, stderr=(home / "console.log").open("wb"), cwd=ROOT, text=True,
    )  # fmt: skip
    address = console.stdout.readline().strip().removeprefix("console on ")
    assert address, (home / "console.log").read_text()
    proxy = AuthProxy(f"http://{address}").start()
    yield replicas, proxy, address, home
    console.terminate()
    assert console.wait(30) == 0
    proxy.stop()
    for replica in replicas:
        replica.stop()


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
    forged = {"X-Forwarded-Email": ONCALL, "X-Forwarded-Groups": "payments-oncall"}
    status, text = _request(address, "GET", "/", source="127.0.0.3", headers=forged)
    assert status == 403 and "not a trusted proxy" in text
    status, _ = _request(address, "GET", "/")  # from the proxy's address, no user: not signed in
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
