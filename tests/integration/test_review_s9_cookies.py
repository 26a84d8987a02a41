"""The sidecar's HTTP clients keep no cookies: a ``Set-Cookie`` from the agent behind the inbound
A2A listener, answering one caller, must never ride along on another caller's request (a session
the agent opened for the planner would otherwise be handed to the next caller). Found by the
issue 26 review of the tool relay; the same holds for the inbound relay, card fetches and the
users' token endpoints (``aiohttp.DummyCookieJar``)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.test_a2a_inbound import (
    AGENT,
    PLANNER,
    POLICY,
    card_dict,
    client_tls,
    free_port,
    message,
    post,
    records,
)
from tests.support.policies import write_policy


class _CookieAgent(BaseHTTPRequestHandler):
    """A JSON-RPC agent that sets a session cookie and reports the Cookie header it got."""

    seen: list[str] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length))
        self.seen.append(self.headers.get("Cookie") or "")
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request.get("id"),
                "result": {
                    "message": {
                        "role": "ROLE_AGENT",
                        "messageId": f"a-{len(self.seen)}",
                        "parts": [{"text": "ok"}],
                    }
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", f"session=planner-{len(self.seen)}; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cookie_agent():
    _CookieAgent.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieAgent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # a host name: aiohttp's default jar ignores cookies from IP addresses, not from names
    server.url = f"http://localhost:{server.server_address[1]}/"
    yield server
    server.shutdown()
    server.server_close()


def test_review_s9_cookies_an_agents_cookie_never_reaches_the_next_callers_request(
    start_jwt_sidecar, cookie_agent, authority, tmp_path
):
    card = tmp_path / "card.json"
    card.write_text(json.dumps(card_dict(cookie_agent.url)))
    port = free_port()
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a_inbound={
            "listen": f"127.0.0.1:{port}",
            "agent_url": cookie_agent.url,
            "agent_id": AGENT,
            "card": str(card),
            "timeout_s": 5,
        },
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    tls = client_tls(authority, tmp_path, PLANNER)
    for _ in range(3):
        answer = post(running, message("refund order 7"), tls=tls)
        assert answer.status_code == 200, answer.text
    assert _CookieAgent.seen == ["", "", ""]  # three requests reached it, none with a cookie
    assert len(records(running.audit_path, 3)) == 3
