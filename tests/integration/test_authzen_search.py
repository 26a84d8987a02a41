"""Issue 29, deliverables 3 and 4: the AuthZEN 1.0 search APIs (subject, resource and action
search over the configured catalog, paginated) against a real ``agent-sidecar serve`` process
on the shipped policy, and ``agent-sidecar explain`` as a real subprocess.

The central guarantee: a search's results are exactly the candidates a single evaluation
allows, and explain's rows are what those evaluations decide. Hostile cases: malformed
bodies, wrong types, huge and bad limits, tampered, forged and re-bound page tokens,
unauthenticated mTLS callers, unknown subjects, concurrent searches.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sidecar.authzen.search import PageTokens, SearchError, binding_of
from sidecar.mcp.pins import PinStore
from sidecar.policy.source import load_policy_dir
from sidecar.state import SqliteStateDb
from tests.support.cli import cli
from tests.support.running import DEMO_CONFIG, ROOT, serve_process
from tests.support.unix_http import UnixConnection

SUPPORT = "spiffe://demo.example/agent/support"
INTERN = "spiffe://demo.example/agent/intern"
NOBODY = "spiffe://demo.example/agent/nobody"  # named nowhere in the policy's data
GATEWAY = "spiffe://demo.example/ns/edge/sa/api-gateway"
PINS = {"notes.search": "sha256:aa", "notes.add": "sha256:bb", "notes.export_all": "sha256:cc"}
TYPES = ("tool", "model", "mcp_tool")
VERBS = ("call", "read", "act", "delegate")


def config(tmp: Path) -> dict:
    """The demo config on the shipped policy, with a catalog of every kind: its tools, three
    model aliases, and the notes MCP server (whose pins are seeded in the state store)."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["policy"]["dir"] = str(ROOT / "rego")
    raw["identity"] = {"mode": "static", "spiffe_id": SUPPORT}
    raw["state"] = {"dir": str(tmp / "state")}
    raw["audit"] = {"path": str(tmp / "audit.log"), "signing_key": str(tmp / "audit.key")}
    raw["approvals"] = {"listen": f"unix://{tmp}/approvals.sock"}
    raw["frontdoor"], raw["mcp"] = {}, {}
    raw["admin"] = {"listen": ""}
    raw["server"] = {"listen": [f"unix://{tmp}/agent.sock"]}
    for target in raw["targets"].values():
        target["base_url"] = "http://127.0.0.1:9"  # decide-only: never reached
        target.pop("auth", None)
    raw["providers"] = {"openai": {"base_url": "http://127.0.0.1:9/v1"}}
    raw["models"] = {
        "gpt-small": {"provider": "openai"},
        "local-small": {"provider": "openai"},
        "gpt-big": {"provider": "openai"},
    }
    raw["mcp_servers"]["notes"]["command"] = [sys.executable, "-m", "examples.demo.notes_mcp"]
    raw["mcp_servers"]["notes"]["cwd"] = str(ROOT)
    raw["authzen"] = {"listen": f"unix://{tmp}/authzen.sock"}
    return raw


def seed_pins(tmp: Path) -> None:
    db = SqliteStateDb(tmp / "state" / "state.db")
    try:
        PinStore(db).pin_new(PINS)
    finally:
        db.close()


def ask(connection, path: str, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} | (headers or {})
    connection.request("POST" if body is not None else "GET", path, body=data, headers=sent)
    answer = connection.getresponse()
    raw = answer.read()
    ctype = answer.getheader("Content-Type", "")
    return answer.status, (json.loads(raw) if "json" in ctype else raw.decode())


@pytest.fixture(scope="module")
def pdp(tmp_path_factory):
    """A real `agent-sidecar serve` process; yields a function answering (status, body)."""
    tmp = tmp_path_factory.mktemp("pdp")
    (tmp / "state").mkdir()
    seed_pins(tmp)
    raw = config(tmp)
    with serve_process(tmp, raw):
        socket_path = str(tmp / "authzen.sock")
        deadline = time.monotonic() + 30
        while True:  # its AuthZEN listener opens right after the agent API
            try:
                ask(UnixConnection(socket_path), "/.well-known/authzen-configuration", None)
                break
            except OSError:
                assert time.monotonic() < deadline, "the AuthZEN listener did not open"
                time.sleep(0.05)

        def call(path: str, body, headers=None):
            return ask(UnixConnection(socket_path), path, body, headers)

        call.tmp = tmp  # type: ignore[attr-defined]
        call.config = tmp / "c.yaml"  # type: ignore[attr-defined]
        yield call


def agent(sid=SUPPORT, **properties):
    return {"type": "agent", "id": sid} | ({"properties": properties} if properties else {})


def all_pages(pdp, kind: str, request: dict, limit: int) -> list[dict]:
    """Every result of a search, page by page (asserting each page's shape)."""
    results, token = [], None
    for _ in range(100):
        page = {"limit": limit} | ({"token": token} if token else {})
        status, doc = pdp(f"/access/v1/search/{kind}", request | {"page": page})
        assert status == 200, doc
        assert doc["page"]["count"] == len(doc["results"]) <= limit
        results.extend(doc["results"])
        token = doc["page"]["next_token"]
        if token == "":
            return results
    raise AssertionError("the search did not end")


def evaluate_all(pdp, requests: list[dict]) -> list[dict]:
    answers = []
    for start in range(0, len(requests), 64):
        status, doc = pdp("/access/v1/evaluations", {"evaluations": requests[start : start + 64]})
        assert status == 200, doc
        answers.extend(doc["evaluations"])
    return answers


def subjects_of_data() -> list[str]:
    data = load_policy_dir(ROOT / "rego").data
    return sorted(data["agentsidecar"]["grants"])


def catalog() -> list[tuple[str, str]]:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    tools = sorted(raw["tools"])
    return (
        [("tool", t) for t in tools]
        + [("model", m) for m in sorted(["gpt-small", "local-small", "gpt-big"])]
        + [("mcp_tool", p) for p in sorted(PINS)]
    )


# --- the central guarantee ---------------------------------------------------------------


def test_item3_search_results_are_exactly_what_single_evaluations_allow(pdp):
    """On the shipped policy: for every subject (a user acting through an agent too), every
    resource type and every verb, the paged resource search equals the resources whose single
    evaluation is true, in catalog order; subject and action search likewise."""
    subjects = [agent(s) for s in [*subjects_of_data(), NOBODY]]
    subjects.append({"type": "user", "id": "alice", "properties": {"agent": SUPPORT}})
    resources = catalog()
    allowed_somewhere = 0
    for subject in subjects:
        for verb in VERBS:
            requests = [
                {"subject": subject, "action": {"name": verb}, "resource": {"type": t, "id": i}}
                for t, i in resources
            ]
            answers = evaluate_all(pdp, requests)
            for rtype in TYPES:
                expected = [
                    {"type": t, "id": i}
                    for (t, i), a in zip(resources, answers, strict=True)
                    if t == rtype and a["decision"] is True
                ]
                allowed_somewhere += len(expected)
                request = {"subject": subject, "action": {"name": verb},
                           "resource": {"type": rtype}}  # fmt: skip
                assert all_pages(pdp, "resource", request, limit=2) == expected, (subject, verb)
    assert allowed_somewhere > 0  # the comparison is not vacuous

    for rtype, ident in resources:
        resource = {"type": rtype, "id": ident}
        requests = [{"subject": agent(s), "action": {"name": "call"}, "resource": resource}
                    for s in subjects_of_data()]  # fmt: skip
        answers = evaluate_all(pdp, requests)
        expected = [
            {"type": "agent", "id": s}
            for s, a in zip(subjects_of_data(), answers, strict=True)
            if a["decision"] is True
        ]
        request = {"subject": {"type": "agent"}, "action": {"name": "call"}, "resource": resource}
        assert all_pages(pdp, "subject", request, limit=3) == expected, resource

        for sid in (SUPPORT, INTERN):
            requests = [{"subject": agent(sid), "action": {"name": v}, "resource": resource}
                        for v in VERBS]  # fmt: skip
            answers = evaluate_all(pdp, requests)
            expected = [{"name": v} for v, a in zip(VERBS, answers, strict=True) if a["decision"]]
            status, doc = pdp("/access/v1/search/action",
                              {"subject": agent(sid), "resource": resource})  # fmt: skip
            assert status == 200 and doc["results"] == expected, (sid, resource)


def test_item3_what_the_shipped_policy_lets_support_and_intern_read(pdp):
    request = {"subject": agent(), "action": {"name": "call"}, "resource": {"type": "tool"}}
    status, doc = pdp("/access/v1/search/resource", request)
    assert status == 200 and doc["page"] == {"next_token": "", "count": 2}
    assert doc["results"] == [{"type": "tool", "id": "kb.search"},
                              {"type": "tool", "id": "tickets.get"}]  # fmt: skip
    models = request | {"resource": {"type": "model"}}
    assert pdp("/access/v1/search/resource", models)[1]["results"] == [
        {"type": "model", "id": "gpt-small"}, {"type": "model", "id": "local-small"},
    ]  # fmt: skip
    mcp = request | {"subject": agent(INTERN), "resource": {"type": "mcp_tool"}}
    assert pdp("/access/v1/search/resource", mcp)[1]["results"] == [
        {"type": "mcp_tool", "id": "notes.search"}
    ]
    who = {"subject": {"type": "agent"}, "action": {"name": "read"},
           "resource": {"type": "tool", "id": "kb.search"}}  # fmt: skip
    status, doc = pdp("/access/v1/search/subject", who)
    assert [r["id"] for r in doc["results"]] == subjects_of_data()  # all four may read it


def test_item3_the_metadata_advertises_the_search_endpoints(pdp):
    status, doc = pdp("/.well-known/authzen-configuration", None)
    assert status == 200
    base = doc["policy_decision_point"]
    for kind in ("subject", "resource", "action"):
        assert doc[f"search_{kind}_endpoint"] == f"{base}/access/v1/search/{kind}"


def test_item3_each_candidate_is_audited_as_an_evaluation_naming_the_caller(pdp):
    """An unknown subject: no results, and one audit record per candidate evaluated."""
    who = "spiffe://demo.example/agent/audited"
    request = {"subject": agent(who), "action": {"name": "call"}, "resource": {"type": "tool"}}
    status, doc = pdp("/access/v1/search/resource", request)
    assert status == 200 and doc["results"] == [] and doc["page"]["next_token"] == ""
    records = [json.loads(line) for line in (pdp.tmp / "audit.log").read_text().splitlines()]
    mine = [r for r in records if r.get("subject", {}).get("spiffe_id") == who]
    assert sorted(r["action"]["name"] for r in mine) == sorted(i for t, i in catalog()
                                                               if t == "tool")  # fmt: skip
    for record in mine:
        assert record["rpc"] == "AuthZENSearch"
        assert record["subject"]["asserted_by"] == "unix:uid=0"
        assert record["outcome"]["relayed"] is False
        assert record["decision"]["effect"] == "deny"


def test_item3_resource_arguments_apply_to_every_candidate(pdp):
    """A search carries resource.properties.arguments into each evaluation, as a single
    evaluation with them would: a card number to the external partner target is denied."""
    args = {"note": "card 4111 1111 1111 1111"}
    subject = agent()
    request = {"subject": subject, "action": {"name": "call"},
               "resource": {"type": "tool", "properties": {"arguments": args}}}  # fmt: skip
    results = pdp("/access/v1/search/resource", request)[1]["results"]
    single = evaluate_all(pdp, [
        {"subject": subject, "action": {"name": "call"},
         "resource": {"type": "tool", "id": i, "properties": {"arguments": args}}}
        for t, i in catalog() if t == "tool"
    ])  # fmt: skip
    tools = [i for t, i in catalog() if t == "tool"]
    assert [r["id"] for r in results] == [i for i, a in zip(tools, single, strict=True)
                                          if a["decision"]]  # fmt: skip


def test_item3_concurrent_searches_agree(pdp):
    request = {"subject": agent(), "action": {"name": "call"}, "resource": {"type": "tool"}}
    answers: list = []

    def run():
        answers.append(all_pages(pdp, "resource", request, limit=1))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 6 and all(a == answers[0] for a in answers)


# --- hostile requests --------------------------------------------------------------------

BASE = {"subject": agent(), "action": {"name": "call"}, "resource": {"type": "tool"}}


@pytest.mark.parametrize(
    ("kind", "body", "status", "words"),
    [
        ("resource", b"{not json", 400, "not valid JSON"),
        ("resource", b"[1]", 400, "JSON object"),
        ("resource", b'{"subject": {}, "subject": {}}', 400, "not valid JSON"),
        ("resource", {"action": {"name": "call"}, "resource": {"type": "tool"}}, 400, "subject"),
        ("resource", BASE | {"subject": "agent"}, 400, "subject"),
        ("resource", BASE | {"resource": {"type": "document"}}, 400, "resource.type"),
        ("resource", BASE | {"resource": {}}, 400, "resource.type"),
        ("resource", BASE | {"action": {"name": "delete"}}, 400, "action.name"),
        ("resource", BASE | {"action": {"name": ["call"]}}, 400, "action.name"),
        ("resource", BASE | {"subject": agent("not-a-spiffe-id")}, 400, "not a SPIFFE ID"),
        ("resource", BASE | {"subject": {"type": "robot", "id": SUPPORT}}, 400, "subject.type"),
        ("resource", BASE | {"page": []}, 400, "page must be an object"),
        ("resource", BASE | {"page": None}, 400, "page must be an object"),
        ("resource", BASE | {"page": {"limit": "10"}}, 400, "page.limit"),
        ("resource", BASE | {"page": {"limit": -1}}, 400, "page.limit"),
        ("resource", BASE | {"page": {"limit": 0}}, 400, "page.limit"),
        ("resource", BASE | {"page": {"limit": True}}, 400, "page.limit"),
        ("resource", BASE | {"page": {"limit": 1.5}}, 400, "page.limit"),
        ("resource", BASE | {"page": {"token": 7}}, 400, "page.token"),
        ("resource", BASE | {"page": {"token": ""}}, 400, "page.token"),
        ("resource", BASE | {"page": {"token": "x" * 5000}}, 400, "page.token"),
        ("resource", BASE | {"page": {"token": "0.99999999999.AAAA"}}, 400, "page.token"),
        ("resource", BASE | {"page": {"token": "-1.1.x"}}, 400, "page.token"),
        (
            "subject",
            {
                "subject": {"type": "user"},
                "action": {"name": "call"},
                "resource": {"type": "tool", "id": "kb.search"},
            },
            400,
            "agent",
        ),
        (
            "subject",
            {
                "subject": {"type": "agent"},
                "action": {"name": "call"},
                "resource": {"type": "tool", "id": "no.such"},
            },
            404,
            "not configured",
        ),
        (
            "subject",
            {
                "subject": {"type": "agent"},
                "action": {"name": "call"},
                "resource": {"type": "tool"},
            },
            400,
            "resource.id",
        ),
        (
            "action",
            {"subject": agent(), "resource": {"type": "model", "id": "gpt-9"}},
            404,
            "not configured",
        ),
        (
            "action",
            {"subject": agent(), "resource": {"type": "mcp_tool", "id": "notes.gone"}},
            404,
            "pinned MCP tool",
        ),
        ("action", {"resource": {"type": "tool", "id": "kb.search"}}, 400, "subject"),
        ("resource", b"{" + b" " * (1024 * 1024 + 10) + b"}", 413, ""),
    ],
)
def test_item3_malformed_search_bodies_are_http_errors_with_a_message(
    pdp, kind, body, status, words
):
    got, text = pdp(f"/access/v1/search/{kind}", body)
    assert got == status, text
    assert words in text


def test_item3_a_search_needs_json(pdp):
    got, text = pdp("/access/v1/search/resource", json.dumps(BASE).encode(),
                    {"Content-Type": "text/plain"})  # fmt: skip
    assert got == 400 and "application/json" in text


def test_item3_a_huge_limit_is_clamped_to_max_evaluations(pdp):
    status, doc = pdp("/access/v1/search/resource", BASE | {"page": {"limit": 10**15}})
    assert status == 200 and doc["page"]["next_token"] == "" and doc["page"]["count"] == 2


def first_page(pdp, request, kind="resource"):
    status, doc = pdp(f"/access/v1/search/{kind}", request | {"page": {"limit": 1}})
    assert status == 200 and doc["page"]["next_token"], doc
    return doc["page"]["next_token"]


def test_item3_a_page_token_is_bound_to_its_request(pdp):
    token = first_page(pdp, BASE)
    ok, doc = pdp("/access/v1/search/resource", BASE | {"page": {"limit": 1, "token": token}})
    assert ok == 200 and doc["results"] == [{"type": "tool", "id": "tickets.get"}]
    changed = [
        BASE | {"subject": agent(INTERN), "page": {"limit": 1, "token": token}},
        BASE | {"action": {"name": "read"}, "page": {"limit": 1, "token": token}},
        BASE | {"resource": {"type": "model"}, "page": {"limit": 1, "token": token}},
        BASE | {"context": {"x": 1}, "page": {"limit": 1, "token": token}},
        BASE | {"page": {"limit": 2, "token": token}},
        BASE | {"page": {"token": token}},
    ]
    for request in changed:
        status, text = pdp("/access/v1/search/resource", request)
        assert status == 400 and "does not match this request" in text, request
    # the same token on another endpoint
    status, text = pdp("/access/v1/search/action", {"subject": agent(),
                       "resource": {"type": "tool", "id": "kb.search"},
                       "page": {"limit": 1, "token": token}})  # fmt: skip
    assert status == 400 and "does not match" in text


def test_item3_a_tampered_or_forged_page_token_is_refused_not_followed(pdp):
    token = first_page(pdp, BASE)
    offset, expires, mac = token.split(".")
    forged = [
        f"{int(offset) + 1}.{expires}.{mac}",  # skip ahead
        f"0.{expires}.{mac}",  # rewind
        f"{offset}.{int(expires) + 10**6}.{mac}",  # outlive its expiry
        f"{offset}.{expires}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"{offset}.{expires}.",
        f"{offset}.{expires}.{mac}.extra",
    ]
    for bad in forged:
        request = BASE | {"page": {"limit": 1, "token": bad}}
        status, text = pdp("/access/v1/search/resource", request)
        assert status == 400 and "page.token" in text, bad


def test_item3_page_tokens_expire_and_die_with_the_process():
    binding = binding_of("resource", BASE, "unix:uid=0")
    issued = PageTokens(b"k" * 32).issue(binding, 3)
    assert PageTokens(b"k" * 32).open(issued, binding) == 3
    with pytest.raises(SearchError, match="does not match"):
        PageTokens(b"j" * 32).open(issued, binding)  # another process's key (a restart)
    with pytest.raises(SearchError, match="does not match"):
        PageTokens(b"k" * 32).open(issued, binding_of("resource", BASE, "unix:uid=1000"))
    expired = PageTokens(b"k" * 32, ttl_s=-1).issue(binding, 3)
    with pytest.raises(SearchError, match="expired"):
        PageTokens(b"k" * 32).open(expired, binding)


def test_item3_a_page_evaluates_at_most_max_evaluations(start_sidecar, tools, tmp_path):
    """With max_evaluations 2 a page stops after two candidates (whatever the limit), and the
    pages together are the whole answer."""
    start_sidecar(tools.url, authzen={"listen": f"unix://{tmp_path}/authzen.sock",
                                      "max_evaluations": 2})  # fmt: skip

    def pdp(path, body):
        return ask(UnixConnection(str(tmp_path / "authzen.sock")), path, body)

    status, doc = pdp("/access/v1/search/resource", BASE | {"page": {"limit": 100}})
    assert status == 200 and len(doc["results"]) <= 2 and doc["page"]["next_token"]
    records = (tmp_path / "audit.log").read_text().count('"AuthZENSearch"')
    assert records == 2
    assert [r["id"] for r in all_pages(pdp, "resource", BASE, limit=100)] == [
        "kb.search", "tickets.get"
    ]  # fmt: skip


@pytest.fixture
def mtls_pdp(start_sidecar, tools, tmp_path, workload_api, authority):
    running = start_sidecar(
        tools.url,
        identity={"mode": "pod", "socket": f"unix://{workload_api.socket_path}"},
        authzen={"listen": "127.0.0.1:0", "callers": [GATEWAY]},
    )
    assert running.sidecar.identity.wait_ready(10)
    port = int(running.sidecar.authzen.address.rsplit(":", 1)[1])
    (tmp_path / "bundle.pem").write_bytes(authority.x509_bundle_pem)

    def connect(spiffe_id: str | None):
        context = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
        context.check_hostname = False
        if spiffe_id:
            issued = authority.issue_x509(spiffe_id)
            name = spiffe_id.rsplit("/", 1)[1]
            (tmp_path / f"{name}.pem").write_bytes(issued.chain_pem + issued.key_pem)
            context.load_cert_chain(tmp_path / f"{name}.pem")
        return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

    return connect


def test_item3_only_authenticated_callers_may_search(mtls_pdp, tmp_path):
    status, doc = ask(mtls_pdp(GATEWAY), "/access/v1/search/resource", BASE)
    assert status == 200 and [r["id"] for r in doc["results"]] == ["kb.search", "tickets.get"]
    token = first_page(lambda path, body: ask(mtls_pdp(GATEWAY), path, body), BASE)
    other = "spiffe://demo.example/ns/edge/sa/other"
    for kind, body in [("resource", BASE), ("action", {"subject": agent(),
                       "resource": {"type": "tool", "id": "kb.search"}}),
                       ("subject", {"subject": {"type": "agent"}, "action": {"name": "call"},
                                    "resource": {"type": "tool", "id": "kb.search"}}),
                       ("resource", BASE | {"page": {"limit": 1, "token": token}})]:  # fmt: skip
        status, text = ask(mtls_pdp(other), f"/access/v1/search/{kind}", body)
        assert status == 403 and "may not ask" in text
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ask(mtls_pdp(None), f"/access/v1/search/{kind}", body)
    searched = (tmp_path / "audit.log").read_text().count('"AuthZENSearch"')
    # only the gateway's searches evaluated anything: six tools, then one (its first page
    # of one result stopped at kb.search)
    assert searched == 6 + 1


# --- agent-sidecar explain ---------------------------------------------------------------


def explain_json(pdp, *args: str) -> dict:
    done = cli("explain", "--config", str(pdp.config), *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# Fixed CPU work, not a wait: one `explain` process per subject, each compiling the policy;
# 127 s alone at load average 14 (xdist workers on 2 cores), past the suite's 120 s hang guard.
@pytest.mark.timeout(360)
def test_item4_explain_rows_are_the_single_evaluations(pdp):
    """Each row of explain (local, from the same config and state store) has the effect and
    reasons the running sidecar's single evaluation gives, for every catalog entry."""
    for sid in [*subjects_of_data(), NOBODY]:
        doc = explain_json(pdp, "--as", sid, "--attestation", "authzen")
        rows = doc["rows"]
        assert [(r["type"], r["id"]) for r in rows] == catalog()
        answers = evaluate_all(pdp, [
            {"subject": agent(sid), "action": {"name": "call"},
             "resource": {"type": r["type"], "id": r["id"]}} for r in rows
        ])  # fmt: skip
        for row, answer in zip(rows, answers, strict=True):
            assert row["effect"] == answer["context"]["effect"], (sid, row)
            assert row["reasons"] == answer["context"]["reasons"], (sid, row)
            assert row["code"] == answer["context"]["code"]
        allowed = [(r["type"], r["id"]) for r in rows if r["effect"] == "allow"]
        searched = []
        for rtype in TYPES:
            request = {"subject": agent(sid), "action": {"name": "call"},
                       "resource": {"type": rtype}}  # fmt: skip
            searched += [(r["type"], r["id"]) for r in all_pages(pdp, "resource", request, 5)]
        assert allowed == searched


def test_item4_explain_prints_a_table_with_effects_and_reasons(pdp):
    done = cli("explain", "--config", str(pdp.config), "--as", SUPPORT, "--task", "refunds")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{SUPPORT} (static), policy ")
    header = next(i for i, line in enumerate(lines) if line.startswith("KIND"))
    rows = {line.split()[1]: line.split(None, 4) for line in lines[header + 1 :]}
    assert set(rows) == {i for _, i in catalog()}
    assert rows["tickets.get"][3] == "allow" and rows["tickets.get"][4] == "-"
    assert rows["payments.refund"][3] == "step_up"
    assert "needs approval" in rows["payments.refund"][4]
    assert rows["tickets.close"][3] == "deny"
    assert f"{SUPPORT} holds no act grant on tickets.close" in rows["tickets.close"][4]
    assert rows["gpt-big"][3] == "deny" and "may not use model gpt-big" in rows["gpt-big"][4]
    assert rows["notes.add"][:4] == ["mcp_tool", "notes.add", "act", "allow"]
    # without a task, acting needs one (the baseline says so in the reasons)
    bare = cli("explain", "--config", str(pdp.config), "--as", SUPPORT)
    assert "act on tickets.create needs a task (StartTask)" in bare.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--as", "not-a-spiffe-id"], "not a SPIFFE ID"),
        (["--as", "spiffe://demo.example/a/../b"], "dot segment"),
        (
            ["--as", SUPPORT, "--user", "eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXNpZw"],
            "no user token issuer is configured",
        ),
        (["--as", SUPPORT, "--attestation", "trusted"], "invalid choice"),
    ],
)
def test_item4_explain_refuses_bad_input_clearly(pdp, args, words):
    done = cli("explain", "--config", str(pdp.config), *args)
    assert done.returncode == 2 and words in done.stderr
    assert "c2VjcmV0LXNpZw" not in done.stdout + done.stderr


def test_item4_explain_without_a_state_store_lists_no_mcp_tools(tmp_path):
    raw = config(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = cli("explain", "--config", str(tmp_path / "c.yaml"), "--as", INTERN, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert {r["type"] for r in rows} == {"tool", "model"}
    assert not (tmp_path / "state").exists()  # explain reads; it never creates state


def test_item4_explain_verifies_the_user_token_as_serve_does(pdp, tmp_path, authority):
    from tests.support.oauth_server import AuthorizationServer

    idp = AuthorizationServer(tmp_path, spiffe=authority, clients={}).start()
    try:
        raw = yaml.safe_load(pdp.config.read_text())
        raw["users"] = {"issuers": {"corp": {"issuer": idp.issuer, "audiences": ["agent-app"],
                                             "ca_file": str(idp.ca_file)}}}  # fmt: skip
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        good = idp.user_token("alice", groups=["support"])
        done = cli("explain", "--config", str(tmp_path / "c.yaml"), "--as", SUPPORT,
                   "--user", good)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "for user alice (corp)" in done.stdout.splitlines()[0]
        assert good not in done.stdout + done.stderr
        # from stdin: the token stays out of the process list
        import subprocess

        piped = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "explain", "--config", str(tmp_path / "c.yaml"),
             "--as", SUPPORT, "--user", "-", "--json"],
            input=good + "\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert piped.returncode == 0 and json.loads(piped.stdout)["user"] == "alice"
        for bad, code in [
            (idp.user_token("alice", audience="someone-else"), "user_token_audience_mismatch"),
            (idp.user_token("alice", ttl_s=-600), "user_token_expired"),
            (
                good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
                "user_token_bad_signature",
            ),
            ("not-a-token", "user_token_malformed"),
        ]:
            done = cli("explain", "--config", str(tmp_path / "c.yaml"), "--as", SUPPORT,
                       "--user", bad)  # fmt: skip
            assert done.returncode == 2 and code in done.stderr, (code, done.stderr)
            assert bad not in done.stdout + done.stderr
    finally:
        idp.stop()


def test_review_s10_authzen_the_tls_listener_waits_for_the_first_svid(
    start_sidecar, tools, tmp_path, authority, caplog
):
    """Found by CI (session 10): the AuthZEN TCP listener read the X.509-SVID at start without
    waiting for the Workload API's first one, so a sidecar that started faster than its SVID
    arrived failed with ``identity_not_ready``. Here the Workload API appears only after the
    sidecar has found it unreachable: the listener waits for it, then serves mutual TLS."""
    from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer

    socket = tmp_path / "late" / "wl.sock"
    socket.parent.mkdir()
    outcome: dict[str, object] = {}

    def build() -> None:
        try:
            outcome["running"] = start_sidecar(
                tools.url,
                identity={"mode": "pod", "socket": f"unix://{socket}"},
                authzen={"listen": "127.0.0.1:0", "callers": [GATEWAY]},
            )
        except Exception as exc:  # the test reports it below
            outcome["error"] = exc

    starting = threading.Thread(target=build, daemon=True)
    with caplog.at_level("WARNING", logger="sidecar.identity.workload"):
        starting.start()
        for _ in range(3000):  # the sidecar is starting and has found no Workload API yet
            if any("not reachable yet" in r.getMessage() for r in caplog.records):
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the sidecar never looked for its Workload API")
    server = DevWorkloadApiServer(
        DevWorkloadApi(authority, "spiffe://demo.example/agent/support"), socket
    ).start()
    try:
        starting.join(60)
        assert not starting.is_alive() and "error" not in outcome, outcome.get("error")
        running = outcome["running"]
        port = int(running.sidecar.authzen.address.rsplit(":", 1)[1])  # type: ignore[attr-defined]
        (tmp_path / "bundle.pem").write_bytes(authority.x509_bundle_pem)
        context = ssl.create_default_context(cafile=str(tmp_path / "bundle.pem"))
        context.check_hostname = False
        issued = authority.issue_x509(GATEWAY)
        (tmp_path / "gw.pem").write_bytes(issued.chain_pem + issued.key_pem)
        context.load_cert_chain(tmp_path / "gw.pem")
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        connection.request("GET", "/.well-known/authzen-configuration")
        assert connection.getresponse().status == 200
    finally:
        server.stop()
