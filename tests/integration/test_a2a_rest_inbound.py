"""Issue 34: the inbound listener speaks A2A's JSON-RPC binding only (docs/a2a.md "Bindings").
A request shaped like the HTTP+JSON binding gets a clear A2A error with a stable code
(``binding_unsupported``, HTTP 404, JSON-RPC -32601), never reaches the agent, and is
audited; other unknown paths stay a plain, unaudited 404."""

# ruff: noqa: F811  (the fixtures are imported from test_a2a_inbound)
from __future__ import annotations

import httpx
import pytest

from tests.conftest import audit_lines
from tests.integration.test_a2a_inbound import (  # noqa: F401 (fixtures)
    PLANNER,
    agent,
    client_tls,
    idp,
    inbound,
    records,
)

REST_REQUESTS = [
    ("POST", "/message:send", {"message": {"role": "ROLE_USER", "parts": [{"text": "hi"}]}}),
    ("POST", "/message:stream", {"message": {"role": "ROLE_USER", "parts": [{"text": "hi"}]}}),
    ("GET", "/tasks/t-1", None),
    ("POST", "/tasks/t-1:cancel", {}),
    ("GET", "/tasks", None),
    ("DELETE", "/tasks/t-1/pushNotificationConfigs/c-1", None),
    ("GET", "/extendedAgentCard", None),
    ("POST", "/v1/message:send", {}),
    ("GET", "/tenant-a/tasks/t-1", None),
]


@pytest.mark.parametrize(("verb", "path", "body"), REST_REQUESTS)
def test_item34_rest_a_rest_request_to_the_listener_is_binding_unsupported_and_audited(
    inbound, agent, authority, tmp_path, verb, path, body
):
    with httpx.Client(verify=client_tls(authority, tmp_path, PLANNER), timeout=30) as http:
        answer = http.request(verb, inbound.url.rstrip("/") + path, json=body)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == -32601 and error["data"]["code"] == "binding_unsupported"
    assert "JSON-RPC" in error["message"] and error["data"]["decision_id"]
    assert agent.seen == []
    [record] = records(inbound.audit_path)
    assert record["outcome"]["code"] == "binding_unsupported"
    assert record["decision_id"] == error["data"]["decision_id"]


def test_item34_rest_another_unknown_path_stays_an_unaudited_404(
    inbound, agent, authority, tmp_path
):
    with httpx.Client(verify=client_tls(authority, tmp_path, PLANNER), timeout=30) as http:
        answer = http.get(inbound.url.rstrip("/") + "/favicon.ico")
    assert answer.status_code == 404 and answer.json()["error"]["data"]["code"] == "not_found"
    assert audit_lines(inbound.audit_path) == []
