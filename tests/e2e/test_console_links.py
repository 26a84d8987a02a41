"""Issue 29 item 2: the console page a deep link opens, in Debian's Chromium (Playwright),
behind the oauth2-proxy-like test proxy, over the PostgreSQL store a sidecar replica shares.

The sidecar is configured with ``approvals.console_url`` (the proxy's address, as people reach
the console); the link it gives an agent, opened signed out, goes through sign-in and lands on
exactly that approval, which can be decided there. A crafted ``next`` (another origin,
``//host``, backslashes, encoded slashes, a path that is not a console page) lands on the
index: the console's ``/login`` follows only its own pages.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from examples.demo.run import free_port
from sidecar.client import StepUpRequired
from tests.e2e import test_console as console_tests
from tests.e2e.test_console import (
    CHROMIUM,
    PROXY_SECRET,
    SECRET_HEADER,
    _start_console,
    _stop_console,
)
from tests.support.auth_proxy import AuthProxy
from tests.support.fleet import ONCALL, fleet_config, start_replicas

assert CHROMIUM.exists() or not os.environ.get("AGENT_SIDECAR_REQUIRE_CHROMIUM")

browser = console_tests.browser  # the same Chromium fixture (test_console skips without one)
EVIL = "evil.example"


@pytest.fixture
def linked(tmp_path, tools, pg_state):
    """A replica whose links point at the proxy, the console behind it (TCP + secret)."""
    proxy_port = free_port()
    console_url = f"http://127.0.0.1:{proxy_port}"

    def config(home: Path) -> dict:
        raw = fleet_config(home, tools.url, pg_state)
        raw["approvals"]["console_url"] = console_url
        return raw

    [replica] = start_replicas(tmp_path, 1, config)
    home = tmp_path / "console"
    home.mkdir()
    (home / "proxy.secret").write_text(PROXY_SECRET + "\n")
    process, address = _start_console(home, fleet_config(home, tools.url, pg_state), {
        "listen": f"127.0.0.1:{free_port()}", "auth": "proxy",
        "trusted_proxies": ["127.0.0.1/32"], "proxy_secret_file": str(home / "proxy.secret"),
    })  # fmt: skip
    proxy = AuthProxy(f"http://{address}", secret=PROXY_SECRET, port=proxy_port).start()
    assert proxy.url == console_url
    yield replica, proxy, address
    _stop_console(process)
    proxy.stop()
    replica.stop()


def _signed_out(browser):
    """A fresh browser context; any request to the evil host is answered locally, so a
    redirect there would show as a page saying EVIL (never a real request out)."""
    context = browser.new_context()
    context.route(
        lambda url: urlsplit(url).hostname == EVIL,
        lambda route: route.fulfill(body="EVIL", status=200),
    )
    return context.new_page()


def _sign_in_here(page, user: str = ONCALL, groups: str = "payments-oncall,eng") -> None:
    page.wait_for_selector("text=Sign in")
    page.get_by_label("Email").fill(user)
    page.get_by_label("Groups").fill(groups)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#who")


def _ask(replica, task: str, amount: int) -> StepUpRequired:
    with replica.client() as client, pytest.raises(StepUpRequired) as step_up:
        client.call_tool(
            "payments.refund", {"order": "A-1", "amount": amount}, task_id=task, wait=False
        )
    return step_up.value


def test_item2_a_deep_link_opened_signed_out_lands_on_that_approval_after_sign_in(
    linked, browser, tools
):
    replica, proxy, _ = linked
    with replica.client() as client:
        task = client.start_task("refund A-1 for a broken phone").task_id
    other = _ask(replica, task, 300)  # another pending approval: the link is not "the newest"
    step_up = _ask(replica, task, 500)
    _ask(replica, task, 700)
    link = step_up.approval_url
    assert link == f"{proxy.url}/approvals/{step_up.approval_id}"
    assert other.approval_url != link

    page = _signed_out(browser)
    page.goto(link)
    assert "/oauth2/sign_in" in page.url  # signed out: the proxy asks who you are first
    _sign_in_here(page)
    assert page.url == link
    body = page.locator("body")
    assert body.get_attribute("data-page") == "detail"
    assert body.get_attribute("data-id") == step_up.approval_id
    assert page.locator("#state").inner_text() == "pending"
    assert '"amount": 500' in page.locator("pre").inner_text()  # exactly that call
    # Decided where the link led, and the agent's retry goes through once.
    page.get_by_label("Reason (recorded in the audit log)").fill("customer verified")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_selector("text=You approved this request.")
    with replica.client() as client:
        reply = client.call_tool(
            "payments.refund",
            {"order": "A-1", "amount": 500},
            task_id=task,
            approval_id=step_up.approval_id,
        )
    assert reply.status == 200
    assert [json.loads(r.body)["amount"] for r in tools.received if r.path == "/refunds"] == [500]

    # Signed in already: the link opens the page directly, and so does /login?next=<link path>.
    page.goto(other.approval_url)
    assert page.locator("body").get_attribute("data-id") == other.approval_id
    page.goto(f"{proxy.url}/login?next=/approvals/{other.approval_id}")
    assert page.url == other.approval_url


CRAFTED_STARTS = [
    f"/login?next=https://{EVIL}/phish",
    f"/login?next=//{EVIL}/phish",
    f"/login?next=/%5C{EVIL}/phish",
    f"/login?next=%2F%2F{EVIL}",
    f"/oauth2/sign_in?rd=https://{EVIL}/phish",
    f"/oauth2/sign_in?rd=//{EVIL}",
    "/oauth2/sign_in?rd=javascript:alert(document.cookie)",
]


def test_item2_a_crafted_next_goes_to_the_index_never_another_site(linked, browser):
    """Each crafted start, signed out in a fresh context, on one console (one setup)."""
    _, proxy, _ = linked
    for start in CRAFTED_STARTS:
        page = _signed_out(browser)
        page.goto(proxy.url + start)
        _sign_in_here(page)
        assert page.url == proxy.url + "/", start
        assert page.locator("body").get_attribute("data-page") == "list", start
        assert "EVIL" not in page.content(), start
        page.context.close()


LOGIN_CASES = [
    (f"https://{EVIL}/", "/"),
    (f"//{EVIL}", "/"),
    (f"/\\{EVIL}", "/"),
    (f"\\\\{EVIL}", "/"),
    (f"/approvals/ap-01M80X1VR5QTVTZXSGFGNHPQKG/../../{EVIL}", "/"),
    ("/approvals/ap-01M80X1VR5QTVTZXSGFGNHPQKG\r\nSet-Cookie: a=b", "/"),
    ("/events", "/"),
    ("/" + "a" * 5000, "/"),
    ("/approvals/ap-01M80X1VR5QTVTZXSGFGNHPQKG", "/approvals/ap-01M80X1VR5QTVTZXSGFGNHPQKG"),
    ("/?state=history", "/?state=history"),
]


def test_item2_login_follows_only_console_pages(linked):
    """The console itself, asked by its proxy: Location is the landing, nothing else."""
    _, _, address = linked
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for next_value, lands in LOGIN_CASES:
        conn.request(
            "GET",
            "/login?" + urlencode({"next": next_value}),
            headers={"X-Forwarded-Email": ONCALL, SECRET_HEADER: PROXY_SECRET},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 303, next_value
        assert response.getheader("Location") == lands, next_value
        assert response.getheader("Set-Cookie") is None, next_value
        assert response.getheader("X-Frame-Options") == "DENY", next_value
    conn.request(  # two nexts: which one would a proxy have meant? Neither.
        "GET",
        "/login?next=/%3Fstate%3Dhistory&next=https://" + EVIL,
        headers={"X-Forwarded-Email": ONCALL, SECRET_HEADER: PROXY_SECRET},
    )
    response = conn.getresponse()
    response.read()
    assert (response.status, response.getheader("Location")) == (303, "/")
    conn.request("GET", "/login?next=/", headers={"X-Forwarded-Email": ONCALL})  # no secret
    response = conn.getresponse()
    response.read()
    assert response.status == 403 and response.getheader("Location") is None
    conn.close()


# --- review of issue 29 (r29): a console reached under a path --------------------------------

PREFIXED = "https://approvals.example.com/console"
ID = "ap-01M80X1VR5QTVTZXSGFGNHPQKG"


@pytest.fixture
def prefixed(tmp_path, tools, pg_state):
    """The console, configured with a console_url under /console (its proxy routes
    /console/* to it), asked directly as its proxy would."""
    home = tmp_path / "console"
    home.mkdir()
    (home / "proxy.secret").write_text(PROXY_SECRET + "\n")
    raw = fleet_config(home, tools.url, pg_state)
    raw["approvals"]["console_url"] = PREFIXED
    process, address = _start_console(home, raw, {
        "listen": f"127.0.0.1:{free_port()}", "auth": "proxy",
        "trusted_proxies": ["127.0.0.1/32"], "proxy_secret_file": str(home / "proxy.secret"),
    })  # fmt: skip
    yield address
    _stop_console(process)


PREFIXED_CASES = [
    (f"/console/approvals/{ID}", f"/console/approvals/{ID}"),  # as the browser asked
    (f"/approvals/{ID}", f"/console/approvals/{ID}"),  # as the console serves it
    ("/console/?state=history", "/console/?state=history"),
    (f"https://{EVIL}/console/", "/console/"),
    (f"//{EVIL}/console", "/console/"),
    (f"/console//{EVIL}", "/console/"),
    (f"/console/../approvals/{ID}", "/console/"),
    (None, "/console/"),
]


def test_review_L5_login_under_a_path_prefix_lands_under_it(prefixed):
    host, port = prefixed.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"X-Forwarded-Email": ONCALL, SECRET_HEADER: PROXY_SECRET}
    for next_value, lands in PREFIXED_CASES:
        query = "" if next_value is None else "?" + urlencode({"next": next_value})
        conn.request("GET", "/login" + query, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 303, next_value
        assert response.getheader("Location") == lands, next_value
    conn.close()
