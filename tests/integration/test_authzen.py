"""The AuthZEN Authorization API 1.0, against a running sidecar: the request and response
shapes of the specification's examples (single evaluation, boxcarring with defaults, the
three evaluation semantics, per-evaluation errors, transport errors, X-Request-ID, PDP
metadata), over the unix socket and over mTLS with real SVIDs."""

from __future__ import annotations

import http.client
import json
import ssl

import pytest

from tests.support.policies import write_policy
from tests.support.unix_http import UnixConnection

AGENT = "spiffe://demo.example/agent/support"
GATEWAY = "spiffe://demo.example/ns/edge/sa/api-gateway"

POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow"} if {
	input.action.name == "tickets.get"
	input.subject.attestation == "authzen"
}

decision := {
	"effect": "step_up",
	"reasons": ["refunds above 100 need approval"],
	"obligations": {"approval": {"approvers": ["group:payments-oncall"], "ttl_s": 600}},
} if {
	input.action.name == "payments.refund"
	is_number(input.action.arguments.amount)
	input.action.arguments.amount > 100
}

decision := {"effect": "allow", "reasons": [sprintf("for %v", [input.user.sub])]} if {
	input.action.name == "payments.refund"
	is_number(input.action.arguments.amount)
	input.action.arguments.amount <= 100
	"finance" in input.user.groups
}
"""


def ask(connection, method: str, path: str, body=None, headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} | (headers or {})
    connection.request(method, path, body=data, headers=sent)
    answer = connection.getresponse()
    raw = answer.read()
    ctype = answer.getheader("Content-Type", "")
    return answer.status, (json.loads(raw) if "json" in ctype else raw.decode()), answer


@pytest.fixture
def policy_dir(tmp_path):
    return write_policy(tmp_path / "policy", POLICY)


@pytest.fixture
def pdp(start_sidecar, tools, tmp_path, policy_dir):
    running = start_sidecar(
        tools.url,
        policy={"dir": str(policy_dir)},
        authzen={"listen": f"unix://{tmp_path}/authzen.sock"},
    )
    running.tmp = tmp_path
    yield lambda: UnixConnection(str(tmp_path / "authzen.sock"))


def agent(**properties):
    return {"type": "agent", "id": AGENT} | ({"properties": properties} if properties else {})


def tool(name, **arguments):
    doc = {"type": "tool", "id": name}
    return doc | ({"properties": {"arguments": arguments}} if arguments else {})


def test_the_metadata_names_the_endpoints(pdp):
    status, doc, _ = ask(pdp(), "GET", "/.well-known/authzen-configuration")
    assert status == 200
    base = doc["policy_decision_point"]
    assert doc["access_evaluation_endpoint"] == base + "/access/v1/evaluation"
    assert doc["access_evaluations_endpoint"] == base + "/access/v1/evaluations"


def test_a_single_evaluation_allows_and_is_audited(pdp, tmp_path):
    request = {
        "subject": agent(),
        "resource": tool("tickets.get", id="7"),
        "action": {"name": "call"},
        "context": {"time": "1985-10-26T01:22-07:00"},
    }
    status, doc, answer = ask(pdp(), "POST", "/access/v1/evaluation", request,
                              {"X-Request-ID": "bfe9eb29-ab87"})  # fmt: skip
    assert status == 200 and answer.getheader("X-Request-ID") == "bfe9eb29-ab87"
    assert doc["decision"] is True
    assert doc["context"]["effect"] == "allow" and doc["context"]["code"] == "ok"
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    [record] = [r for r in records if r.get("rpc") == "AuthZEN"]
    assert record["decision_id"] == doc["context"]["id"]
    assert record["subject"] == {
        "spiffe_id": AGENT, "attestation": "authzen", "asserted_by": "unix:uid=0",
    }  # fmt: skip
    assert record["outcome"]["relayed"] is False


def test_step_up_is_a_false_decision_with_the_approvers_in_context(pdp):
    request = {"subject": agent(), "resource": tool("payments.refund", amount=500),
               "action": {"name": "act"}}  # fmt: skip
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluation", request)
    assert status == 200 and doc["decision"] is False
    context = doc["context"]
    assert context["effect"] == "step_up" and context["reasons"] == [
        "refunds above 100 need approval"
    ]
    assert context["step_up"] == {"approval_required": True, "approvers": ["group:payments-oncall"]}


def test_a_user_subject_acting_through_an_agent(pdp):
    request = {
        "subject": {"type": "user", "id": "alice",
                    "properties": {"agent": AGENT, "groups": ["finance"]}},
        "resource": tool("payments.refund", amount=50),
        "action": {"name": "call"},
    }  # fmt: skip
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluation", request)
    assert status == 200 and doc["decision"] is True
    assert doc["context"]["reasons"] == ["for alice"]


def test_boxcarring_with_defaults_answers_in_order(pdp):
    request = {
        "subject": agent(),
        "action": {"name": "call"},
        "context": {"time": "2024-05-31T15:22-07:00"},
        "evaluations": [
            {"resource": tool("tickets.get", id="1")},
            {"resource": tool("tickets.close", id="1")},
            {"resource": tool("payments.refund", amount=500), "action": {"name": "act"}},
        ],
    }
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluations", request)
    assert status == 200
    assert [e["decision"] for e in doc["evaluations"]] == [True, False, False]
    assert doc["evaluations"][1]["context"]["reasons"] == ["not granted"]
    assert doc["evaluations"][2]["context"]["effect"] == "step_up"


@pytest.mark.parametrize(
    ("semantic", "decisions"),
    [
        ("execute_all", [True, False, True]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
def test_the_three_evaluation_semantics(pdp, semantic, decisions):
    request = {
        "subject": agent(),
        "action": {"name": "call"},
        "evaluations": [
            {"resource": tool("tickets.get", id="1")},
            {"resource": tool("tickets.close", id="1")},
            {"resource": tool("tickets.get", id="2")},
        ],
        "options": {"evaluations_semantic": semantic},
    }
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluations", request)
    assert status == 200
    assert [e["decision"] for e in doc["evaluations"]] == decisions


def test_evaluations_without_an_array_behave_as_one_evaluation(pdp):
    request = {"subject": agent(), "resource": tool("tickets.get"), "action": {"name": "call"}}
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluations", request)
    assert status == 200 and doc["decision"] is True and "evaluations" not in doc


def test_errors_of_one_evaluation_are_false_decisions_with_the_error(pdp):
    request = {
        "action": {"name": "call"},
        "evaluations": [
            {"subject": agent(), "resource": tool("no.such.tool")},
            {
                "subject": {"type": "agent", "id": "not-a-spiffe-id"},
                "resource": tool("tickets.get"),
            },
            {"subject": agent(), "resource": tool("tickets.get"), "action": {"name": "act"}},
            {"subject": agent(), "resource": {"type": "document", "id": "x"}},
        ],
    }
    status, doc, _ = ask(pdp(), "POST", "/access/v1/evaluations", request)
    assert status == 200
    errors = [e["context"]["error"]["status"] for e in doc["evaluations"]]
    assert errors == [404, 400, 400, 400]
    assert all(e["decision"] is False for e in doc["evaluations"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        ({"resource": tool("tickets.get"), "action": {"name": "call"}}, None, 400, "subject"),
        (b"{not json", None, 400, "not valid JSON"),
        (b"[1, 2]", None, 400, "JSON object"),
        (b'{"subject": {}, "subject": {}}', None, 400, "not valid JSON"),
        ({"subject": agent()}, "text/plain", 400, "application/json"),
        (b"{" + b" " * (1024 * 1024 + 10) + b"}", None, 413, ""),
    ],
    ids=["missing-subject", "not-json", "array", "duplicate-key", "content-type", "too-large"],
)
def test_malformed_requests_are_http_errors_with_a_message(pdp, body, content_type, status, words):
    headers = {"Content-Type": content_type} if content_type else {}
    got, text, _ = ask(pdp(), "POST", "/access/v1/evaluation", body, headers)
    assert got == status
    assert words in text


def test_too_many_evaluations_are_refused(pdp):
    request = {"subject": agent(), "action": {"name": "call"},
               "evaluations": [{"resource": tool("tickets.get")}] * 65}  # fmt: skip
    status, text, _ = ask(pdp(), "POST", "/access/v1/evaluations", request)
    assert status == 400 and "at most 64" in text


@pytest.fixture
def mtls_pdp(start_sidecar, tools, tmp_path, policy_dir, workload_api, authority):
    running = start_sidecar(
        tools.url,
        identity={"mode": "pod", "socket": f"unix://{workload_api.socket_path}"},
        policy={"dir": str(policy_dir)},
        authzen={"listen": "127.0.0.1:0", "callers": [GATEWAY]},
    )
    assert running.sidecar.identity.wait_ready(10)  # its TLS server needs the SVID
    port = int(running.sidecar.authzen.address.rsplit(":", 1)[1])
    (tmp_path / "bundle.pem").write_bytes(authority.x509_bundle_pem)

    def connect(spiffe_id: str | None):
        context = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
        context.check_hostname = False  # SPIFFE: the peer is named by its URI SAN, not DNS
        if spiffe_id:
            issued = authority.issue_x509(spiffe_id)
            name = spiffe_id.rsplit("/", 1)[1]
            (tmp_path / f"{name}.pem").write_bytes(issued.chain_pem + issued.key_pem)
            context.load_cert_chain(tmp_path / f"{name}.pem")
        return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

    return connect


def test_over_mtls_only_the_configured_callers_may_ask(mtls_pdp):
    request = {"subject": agent(), "resource": tool("tickets.get"), "action": {"name": "call"}}
    status, doc, _ = ask(mtls_pdp(GATEWAY), "POST", "/access/v1/evaluation", request)
    assert status == 200 and doc["decision"] is True
    status, text, _ = ask(mtls_pdp("spiffe://demo.example/ns/edge/sa/other"), "POST",
                          "/access/v1/evaluation", request)  # fmt: skip
    assert status == 403 and "may not ask" in text
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ask(mtls_pdp(None), "POST", "/access/v1/evaluation", request)
