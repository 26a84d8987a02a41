"""Review s12 (h2): push-notification URLs are matched by host AND port, through real
sidecars running the shipped rego, both directions.

Outbound (the agent gives a peer a push URL; data.agentsidecar.a2a.push_hosts[PEER]) and
inbound (a caller gives this agent one; inbound_push_hosts[THIS AGENT]): a listed host on
another port is denied, its scheme's default port and an explicitly listed port pass, and a
URL with userinfo is refused at parse with its password nowhere in the answer or the audit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGO, SIDECAR_AUDIENCE
from tests.integration.test_a2a_inbound import PLANNER, client_tls, post, records
from tests.integration.test_a2a_outbound import AGENT, Outbound
from tests.integration.test_review_a1_outbound import _peers, peer  # noqa: F401 (fixture)
from tests.integration.test_review_s11_a2a_inbound import (  # noqa: F401 (fixture)
    BILLING,
    code_of,
    ref_agent,
    with_push,
)

SECRET = "s12-hunter2-password"
LISTED = ["hooks.demo.example", "alerts.demo.example:8443", "[fd00::1]:9000"]


def _rego(tmp_path: Path, **tables: Any) -> Path:
    """The shipped rego with ``tables`` set in data.agentsidecar.a2a."""
    rego = tmp_path / "rego"
    shutil.copytree(REGO, rego)
    data_file = rego / "agentsidecar" / "data.json"
    data = json.loads(data_file.read_text())
    data["a2a"].update(tables)
    data_file.write_text(json.dumps(data))
    return rego


# --- outbound --------------------------------------------------------------------------


@pytest.fixture
def outbound(start_jwt_sidecar, authority, peer, tmp_path) -> Outbound:  # noqa: F811
    rego = _rego(tmp_path, push_hosts={"billing": LISTED})
    running = start_jwt_sidecar(
        policy={"dir": str(rego)}, a2a={"listen": "127.0.0.1:0"}, a2a_peers=_peers(peer.url)
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def _send_with_push(url: str, rpc_id: int) -> dict[str, Any]:
    message = {
        "messageId": f"m-{rpc_id}",
        "role": "ROLE_USER",
        "parts": [{"text": "echo hi"}],
        "metadata": {"skill": "lookup"},
    }
    config = {"taskPushNotificationConfig": {"url": url, "token": "t"}}
    params = {"message": message, "configuration": config}
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "SendMessage", "params": params}


def _outbound_decision(outbound: Outbound, url: str, rpc_id: int) -> tuple[dict, dict]:
    """The answer and the audit record of one send naming ``url``."""
    answer = outbound.post(_send_with_push(url, rpc_id)).json()
    record = outbound.records()[-1]
    return answer, record


@pytest.mark.parametrize(
    ("url", "push"),
    [
        ("https://hooks.demo.example:6379/", ("https", "hooks.demo.example", 6379)),
        ("http://hooks.demo.example:443/", ("http", "hooks.demo.example", 443)),
        ("https://alerts.demo.example/", ("https", "alerts.demo.example", 443)),
        ("https://alerts.demo.example:8444/", ("https", "alerts.demo.example", 8444)),
        ("http://[fd00::1]/", ("http", "fd00::1", 80)),
    ],
)
def test_s12_push_port_outbound_a_listed_host_on_another_port_is_denied(outbound, peer, url, push):  # noqa: F811
    answer, record = _outbound_decision(outbound, url, 1)
    scheme, host, port = push
    assert answer["error"]["data"]["code"] == "policy_deny", answer
    reason = f"URL on host {host} port {port} (data.agentsidecar.a2a.push_hosts)"
    assert any(reason in r for r in answer["error"]["data"]["reasons"]), answer
    assert peer.seen == []
    assert record["outcome"]["code"] == "policy_deny"
    assert record["decision"]["reasons"] == answer["error"]["data"]["reasons"]
    assert scheme in url  # (the outbound record keeps the arguments' keys only: log redacted)


@pytest.mark.parametrize(
    ("url", "push"),
    [
        ("https://hooks.demo.example/a2a", ("https", "hooks.demo.example", 443)),
        ("http://HOOKS.demo.example/a2a", ("http", "hooks.demo.example", 80)),
        ("https://hooks.demo.example:443/a2a", ("https", "hooks.demo.example", 443)),
        ("https://alerts.demo.example:8443/a2a", ("https", "alerts.demo.example", 8443)),
        ("http://[FD00:0::1]:9000/", ("http", "fd00::1", 9000)),
    ],
)
def test_s12_push_port_outbound_the_default_port_and_a_listed_port_pass(outbound, url, push):
    answer, record = _outbound_decision(outbound, url, 2)
    assert record["decision"]["effect"] == "allow", record
    assert answer.get("error", {}).get("data", {}).get("code") != "policy_deny", answer
    # the same URL on another port is denied: the port, not the host alone, was matched
    scheme, host, port = push
    other = f"{scheme}://[{host}]:{port + 1}/" if ":" in host else f"{scheme}://{host}:{port + 1}/"
    answer, record = _outbound_decision(outbound, other, 3)
    assert answer["error"]["data"]["code"] == "policy_deny", answer
    assert any(f"on host {host} port {port + 1} " in r for r in answer["error"]["data"]["reasons"])


def test_s12_push_port_outbound_userinfo_is_refused_and_never_recorded(outbound, peer):  # noqa: F811
    url = f"https://agent:{SECRET}@hooks.demo.example/a2a"
    answer = outbound.post(_send_with_push(url, 3))
    assert answer.json()["error"]["data"]["code"] == "invalid_params", answer.text
    assert SECRET not in answer.text
    assert peer.seen == []
    [record] = outbound.records()
    assert record["outcome"]["code"] == "malformed_request"
    assert SECRET not in Path(outbound.running.audit_path).read_text()


# --- inbound ---------------------------------------------------------------------------


@pytest.fixture
def listener(start_jwt_sidecar, ref_agent, tmp_path):  # noqa: F811
    rego = _rego(tmp_path, inbound_push_hosts={BILLING: LISTED})
    running = start_jwt_sidecar(
        policy={"dir": str(rego)},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": ref_agent.url, "agent_id": BILLING},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


@pytest.mark.parametrize(
    ("url", "push"),
    [
        ("https://hooks.demo.example:6379/", ("https", "hooks.demo.example", 6379)),
        ("http://hooks.demo.example:443/", ("http", "hooks.demo.example", 443)),
        ("https://alerts.demo.example/", ("https", "alerts.demo.example", 443)),
        ("http://[fd00::1]:9001/", ("http", "fd00::1", 9001)),
    ],
)
def test_s12_push_port_inbound_a_listed_host_on_another_port_is_denied(
    listener,
    ref_agent,  # noqa: F811
    authority,
    tmp_path,
    url,
    push,
):
    answer = post(listener, with_push(url), tls=client_tls(authority, tmp_path, PLANNER))
    assert code_of(answer) == "inbound_denied", answer.text
    scheme, host, port = push
    assert f"on host {host} port {port}" in answer.json()["error"]["message"]
    assert ref_agent.texts == []
    [record] = records(listener.audit_path, 1)
    assert record["action"]["inbound"]["push_url"] == {"scheme": scheme, "host": host, "port": port}
    assert record["decision"]["effect"] == "deny"


@pytest.mark.parametrize(
    ("url", "push"),
    [
        ("https://hooks.demo.example/a2a", ("https", "hooks.demo.example", 443)),
        ("http://hooks.demo.example:80/a2a", ("http", "hooks.demo.example", 80)),
        ("https://alerts.demo.example:8443/a2a", ("https", "alerts.demo.example", 8443)),
        ("http://[fd00::1]:9000/", ("http", "fd00::1", 9000)),
    ],
)
def test_s12_push_port_inbound_the_default_port_and_a_listed_port_pass(
    listener,
    ref_agent,  # noqa: F811
    authority,
    tmp_path,
    url,
    push,
):
    answer = post(listener, with_push(url), tls=client_tls(authority, tmp_path, PLANNER))
    assert "error" not in answer.json() or code_of(answer) != "inbound_denied", answer.text
    [record] = records(listener.audit_path, 1)
    assert record["decision"]["effect"] == "allow", record
    scheme, host, port = push
    assert record["action"]["inbound"]["push_url"] == {"scheme": scheme, "host": host, "port": port}


def test_s12_push_port_inbound_userinfo_is_refused_and_never_recorded(
    listener,
    ref_agent,  # noqa: F811
    authority,
    tmp_path,
):
    url = f"https://agent:{SECRET}@hooks.demo.example/a2a"
    answer = post(listener, with_push(url), tls=client_tls(authority, tmp_path, PLANNER))
    error = answer.json()["error"]
    assert (error["code"], error["data"]["code"]) == (-32602, "malformed_request"), answer.text
    assert SECRET not in answer.text
    assert ref_agent.texts == []
    [record] = records(listener.audit_path, 1)
    assert record["outcome"]["code"] == "malformed_request"
    assert SECRET not in Path(listener.audit_path).read_text()
