"""Issue 29 item 1: on MCP 2026-07-28 a step-up is answered ``input_required`` with a URL-mode
elicitation to that approval's page in the approvals console, and the client's retry of the
same request (the sealed ``requestState`` echoed) is relayed once when the approval is granted.

Real parts only: the official SDK's client (its own input_required driver, and the session
driven by hand where the test needs each round), a real sidecar, the real ``notes`` MCP server,
the approvals admin API as approvers use it, and the audit log on disk. Handshake-era
revisions keep the -32011 error."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest
import requests
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ElicitRequestURLParams, ElicitResult, InputRequiredResult

from tests.support.mcp_gateway import TASK, endpoint_url, gateway_overrides, with_client
from tests.support.mcp_upstream import HttpMcpServer
from tests.support.settle import poll

MODERN = "2026-07-28"
CONSOLE = "https://approvals.example.com"
APPROVAL_META = "agent-sidecar.io/approval"
DECISION_META = "agent-sidecar.io/decision_id"
DENIED, APPROVAL_REQUIRED, INVALID_PARAMS = -32010, -32011, -32602
ACCEPT = {"approval": ElicitResult(action="accept")}


class CountingNotes(HttpMcpServer):
    """The ``notes`` server, noting the tool of every ``tools/call`` it is sent (the
    2026-07-28 routing header the sidecar's HTTP upstream sends): what actually ran."""

    def __init__(self) -> None:
        self.tool_calls: list[str] = []
        super().__init__()

    def _recording(self, app: Any) -> Any:
        inner = super()._recording(app)

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                if headers.get(b"mcp-method") == b"tools/call":
                    self.tool_calls.append(headers.get(b"mcp-name", b"").decode())
            await inner(scope, receive, send)

        return asgi


@pytest.fixture
def notes():
    with CountingNotes() as server:
        yield server


@pytest.fixture
def gateway(start_sidecar, tools, notes, tmp_path):
    """Start a sidecar with the MCP endpoint and a console URL; ``approvals`` overrides."""

    def start(console_url: str = CONSOLE, mcp: dict[str, Any] | None = None, **approvals: Any):
        running = start_again(console_url, mcp, **approvals)
        running.task = running.client().start_task("clean up").task_id
        return running

    def start_again(
        console_url: str = CONSOLE, mcp: dict[str, Any] | None = None, **approvals: Any
    ) -> Any:
        """Another sidecar on the same state, audit log and upstream (a restart)."""
        overrides = gateway_overrides(tmp_path, notes, stdio=False, **(mcp or {}))
        overrides["approvals"] = {"console_url": console_url, **approvals}
        running = start_sidecar(tools.url, **overrides)
        running.url = endpoint_url(running)
        return running

    start.again = start_again  # type: ignore[attr-defined]
    return start


def calls(running: Any) -> list[dict[str, Any]]:
    """The audit records of the MCP tools/call attempts, in order."""
    records = [json.loads(line) for line in running.audit_path.read_text().splitlines()]
    return [r for r in records if r.get("type") == "call" and r["rpc"] == "MCP tools/call"]


def first_round(running: Any, arguments: dict[str, Any] | None = None) -> InputRequiredResult:
    """The agent's first tools/call, driven by hand: the input_required answer itself."""

    async def run(client: Client) -> Any:
        return await client.session.call_tool(
            "notes.purge", arguments or {}, meta={TASK: running.task}, allow_input_required=True
        )

    answer = with_client(running.url, run, mode=MODERN, elicitation_callback=_never)
    assert isinstance(answer, InputRequiredResult)
    return answer


def retry(
    running: Any,
    state: str,
    arguments: dict[str, Any] | None = None,
    responses: dict[str, Any] | None = None,
    task: str = "",
) -> Any:
    """One retry of the same request with ``state`` echoed: its answer, or the MCPError."""

    async def run(client: Client) -> Any:
        try:
            return await client.session.call_tool(
                "notes.purge",
                {} if arguments is None else arguments,
                meta={TASK: task or running.task},
                request_state=state,
                input_responses=responses,
                allow_input_required=True,
            )
        except MCPError as exc:
            return exc

    return with_client(running.url, run, mode=MODERN, elicitation_callback=_never)


async def _never(context: Any, params: Any) -> Any:
    raise AssertionError("the client was asked for input it should not have been asked for")


def approval_of(answer: InputRequiredResult) -> dict[str, Any]:
    assert answer.meta is not None
    return answer.meta[APPROVAL_META]


def decided_first_round(
    running: Any, *, approve: bool, reason: str
) -> tuple[InputRequiredResult, str]:
    """The first round, then its approval approved or denied: the answer and the approval id."""
    first = first_round(running)
    approval_id = approval_of(first)["id"]
    with running.approvals() as approvals:
        if approve:
            approvals.approve(approval_id, reason=reason)
        else:
            approvals.deny(approval_id, reason=reason)
    return first, approval_id


def test_item1_the_agent_opens_the_approval_page_and_its_retry_is_relayed_once(gateway):
    """The official client's own driver, as an agent runs it: call_tool → input_required →
    the elicitation callback (the person opens the link; the approver approves) → the
    client retries by itself → the tool's result. One audit record per attempt."""
    running = gateway()
    seen: list[ElicitRequestURLParams] = []

    async def person(context: Any, params: Any) -> ElicitResult:
        seen.append(params)
        approval_id = params.url.rsplit("/", 1)[1]

        def approve() -> None:
            with running.approvals() as approvals:
                approvals.approve(approval_id, reason="ok to purge")

        await asyncio.to_thread(approve)
        return ElicitResult(action="accept")

    async def run(client: Client) -> Any:
        return await client.call_tool("notes.purge", {}, meta={TASK: running.task})

    result = with_client(running.url, run, mode=MODERN, elicitation_callback=person)
    assert isinstance(result, CallToolResult) and result.content[0].text == "purged"
    [asked] = seen
    assert asked.mode == "url" and asked.url.startswith(f"{CONSOLE}/approvals/ap-")
    assert "marked destructive" in asked.message
    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == ["approval_required", "ok"]
    assert [r["outcome"]["relayed"] for r in records] == [False, True]
    assert {r["approval"]["id"] for r in records} == {asked.url.rsplit("/", 1)[1]}
    assert records[1]["approval"]["state"] == "used"


def test_item1_the_wire_exchange_pending_mismatch_granted_and_replayed(gateway):
    """Each round by hand: the exact input_required; a retry while pending is input_required
    again (state only: the person is not asked twice); a retry with other arguments does not
    ride the approval (nor use it up); the granted retry is relayed; its replay is refused."""
    running = gateway()
    first = first_round(running)
    assert first.result_type == "input_required"
    approval = approval_of(first)
    approval_id = approval["id"]
    url = f"{CONSOLE}/approvals/{approval_id}"
    assert approval["url"] == url and approval["state"] == "pending"
    assert any("marked destructive" in r for r in approval["reasons"])
    assert first.meta[DECISION_META] == calls(running)[0]["decision_id"]
    assert set(first.input_requests) == {"approval"}
    asked = first.input_requests["approval"]
    assert asked.method == "elicitation/create"
    assert isinstance(asked.params, ElicitRequestURLParams)
    assert asked.params.mode == "url" and asked.params.url == url
    assert approval_id in asked.params.message
    assert first.request_state and approval_id not in first.request_state  # opaque

    pending = retry(running, first.request_state, responses=ACCEPT)
    assert isinstance(pending, InputRequiredResult)
    assert not pending.input_requests and pending.request_state
    assert approval_of(pending)["id"] == approval_id

    other = retry(running, pending.request_state, arguments={"everything": True})
    assert isinstance(other, MCPError) and other.code == DENIED
    assert other.error.data["code"] == "approval_mismatch"
    assert other.error.data["approval_id"] == approval_id

    # The same tool and arguments under another task: the approval is bound to its task too.
    elsewhere = running.client().start_task("something else").task_id
    moved = retry(running, pending.request_state, responses=ACCEPT, task=elsewhere)
    assert isinstance(moved, MCPError) and moved.error.data["code"] == "approval_mismatch"

    with running.approvals() as approvals:
        approvals.approve(approval_id, reason="ok to purge")
    done = retry(running, pending.request_state, responses=ACCEPT)
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"

    replay = retry(running, pending.request_state, responses=ACCEPT)
    assert isinstance(replay, MCPError) and replay.code == DENIED
    assert replay.error.data["code"] == "approval_used"

    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == [
        "approval_required",
        "approval_required",
        "approval_mismatch",
        "approval_mismatch",
        "ok",
        "approval_used",
    ]
    relayed = [False, False, False, False, True, False]
    assert [r["outcome"]["relayed"] for r in records] == relayed
    assert all(r["approval"]["id"] == approval_id for r in records)


def test_item1_a_denied_approval_refuses_the_retry(gateway):
    running = gateway()
    first, approval_id = decided_first_round(running, approve=False, reason="not today")
    denied = retry(running, first.request_state, responses=ACCEPT)
    assert isinstance(denied, MCPError) and denied.code == DENIED
    assert denied.error.data["code"] == "approval_denied"
    assert denied.error.data["approval_id"] == approval_id
    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == ["approval_required", "approval_denied"]
    assert not any(r["outcome"]["relayed"] for r in records)


def test_item1_an_expired_approval_refuses_the_retry(gateway):
    running = gateway(max_ttl_s=1)
    first = first_round(running)
    approval_id = approval_of(first)["id"]
    with running.approvals() as approvals:
        expires = approvals.approve(approval_id, reason="ok").expires_at_ns
    poll(lambda: time.time_ns() > expires, what="the clock passing the approval's expiry")
    expired = retry(running, first.request_state, responses=ACCEPT)
    assert isinstance(expired, MCPError) and expired.code == DENIED
    assert expired.error.data["code"] == "approval_expired"
    assert [r["outcome"]["code"] for r in calls(running)] == [
        "approval_required",
        "approval_expired",
    ]
    assert not any(r["outcome"]["relayed"] for r in calls(running))


def _tampered(state: str) -> list[str]:
    body, _, mac = state.rpartition(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    return [
        flipped + "." + mac,  # the claims edited
        body + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),  # the seal edited
        state + "=",  # a re-encoding of the same bytes
        "v1.e30." + mac,  # other claims, the old seal
        "",
        "not a state",
        "v1." + "A" * 5000 + "." + mac,  # oversized
    ]


def test_item1_a_tampered_request_state_is_refused_and_audited(gateway):
    running = gateway()
    first, _ = decided_first_round(running, approve=True, reason="ok")
    for bad in _tampered(first.request_state):
        refused = retry(running, bad, responses=ACCEPT)
        assert isinstance(refused, MCPError), bad
        assert refused.code == INVALID_PARAMS and refused.error.data["code"] == "malformed_request"
        assert "requestState" in refused.error.message
    codes = [r["outcome"]["code"] for r in calls(running)]
    assert codes == ["approval_required"] + ["malformed_request"] * len(_tampered("a.b.c"))
    # None of them used the approval: the genuine state still works, once.
    done = retry(running, first.request_state, responses=ACCEPT)
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"


@pytest.mark.parametrize(
    ("state", "responses"),
    [(42, None), ({"ap": "x"}, None), (["v1.a.b"], None), ("v1.a.b", []), ("v1.a.b", "accept")],
    ids=["number", "object", "array", "responses-array", "responses-string"],
)
def test_item1_wrong_typed_state_or_responses_are_refused(gateway, state, responses):
    """Spoken raw: what the official client cannot send."""
    running = gateway()
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        TASK: running.task,
    }
    params: dict[str, Any] = {"name": "notes.purge", "arguments": {}, "_meta": meta}
    params["requestState"] = state
    if responses is not None:
        params["inputResponses"] = responses
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "notes.purge",
    }
    answer = requests.post(running.url, data=json.dumps(body), headers=headers, timeout=10)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == INVALID_PARAMS
    assert error["data"]["code"] == "malformed_request"
    assert not any(r["outcome"]["relayed"] for r in calls(running))


def test_item1_declining_to_open_the_page_ends_with_the_approval_id(gateway):
    """The person declines the link: the client's call ends with -32011 and the approval
    id (it stays pending for an approver; a later retry can carry it in _meta)."""
    running = gateway()

    async def decline(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="decline")

    async def run(client: Client) -> Any:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("notes.purge", {}, meta={TASK: running.task})
        return caught.value

    error = with_client(running.url, run, mode=MODERN, elicitation_callback=decline)
    assert error.code == APPROVAL_REQUIRED and error.error.data["code"] == "approval_required"
    approval_id = error.error.data["approval_id"]
    assert "declined to open the approval page" in error.error.message
    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == ["approval_required"] * 2
    assert {r["approval"]["id"] for r in records} == {approval_id}


@pytest.mark.parametrize(
    ("mode", "callback", "console"),
    [
        ("legacy", True, CONSOLE),  # the handshake era: today's error, unchanged
        (MODERN, False, CONSOLE),  # a client that cannot open a URL
        (MODERN, True, ""),  # no console URL: no page to open
    ],
    ids=["handshake", "no-url-elicitation", "no-console-url"],
)
def test_item1_without_a_page_to_open_the_step_up_stays_the_32011_error(
    gateway, mode, callback, console
):
    running = gateway(console_url=console)
    kw = {"elicitation_callback": _never} if callback else {}

    async def run(client: Client) -> Any:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("notes.purge", {}, meta={TASK: running.task})
        return caught.value

    error = with_client(running.url, run, mode=mode, **kw)
    assert error.code == APPROVAL_REQUIRED
    data = error.error.data
    assert data["code"] == "approval_required" and data["approval_id"].startswith("ap-")
    # The link to the approval's page rides along when there is one (item 2's deep link).
    link = f"{console}/approvals/{data['approval_id']}" if console else None
    assert data.get("approval_url") == link
    assert [r["outcome"]["code"] for r in calls(running)] == ["approval_required"]


def test_item1_with_a_wait_the_first_answer_is_at_once_and_the_retry_waits(gateway):
    """mcp.wait_for_approval_s does not hold the first answer (the person needs the link
    first); the retry may wait for the approver within it (the spec's "may block").

    Deterministic (review L6): the approver acts only once the retry is seen parked on the
    approval in the sidecar's broker, and the retry's record shows that wait."""
    running = gateway(mcp={"wait_for_approval_s": 30})
    first = first_round(running)
    approval_id = approval_of(first)["id"]
    [record] = calls(running)
    assert "approval_wait" not in record["latency_ms"]
    assert record["approval"]["state"] == "pending"
    answers: list[Any] = []
    retrying = threading.Thread(
        target=lambda: answers.append(retry(running, first.request_state, responses=ACCEPT)),
        daemon=True,
    )
    retrying.start()
    assert _parked(running, approval_id), "the retry never waited on the approval"
    with running.approvals() as approvals:
        approvals.approve(approval_id, reason="go")
    retrying.join(60)
    [done] = answers
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"
    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == ["approval_required", "ok"]
    assert "approval_wait" in records[1]["latency_ms"]


def _parked(running: Any, approval_id: str, bound_s: float = 30.0) -> bool:
    """Whether a call waits on ``approval_id`` in the sidecar's broker (polled, bounded)."""
    broker = running.sidecar.approvals
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if approval_id in broker._waiters:  # the broker's own record of who waits on what
            return True
        time.sleep(0.02)
    return False


# --- review of issue 29 (r29) ---------------------------------------------------------------

DECLINE = {"approval": ElicitResult(action="decline")}
CANCEL = {"approval": ElicitResult(action="cancel")}


@pytest.mark.parametrize("answer", [DECLINE, CANCEL], ids=["decline", "cancel"])
def test_review_M1_a_decline_after_the_grant_never_runs_the_tool(gateway, notes, answer):
    """An approver granted the approval meanwhile; the person at the client declines: the
    tool does not run, the approval is not used (it stays granted), the answer is -32011
    with the approval's id and page; a later explicit retry by id is relayed once."""
    running = gateway()
    first, approval_id = decided_first_round(running, approve=True, reason="ok to purge")
    declined = retry(running, first.request_state, responses=answer)
    assert isinstance(declined, MCPError) and declined.code == APPROVAL_REQUIRED
    data = declined.error.data
    assert data["code"] == "approval_required" and data["approval_id"] == approval_id
    assert data["approval_url"] == f"{CONSOLE}/approvals/{approval_id}"
    assert "declined to open the approval page" in declined.error.message
    assert notes.tool_calls == []  # the upstream never saw the call
    with running.approvals() as approvals:
        assert approvals.get(approval_id).state == "approved"  # not used up

    async def by_id(client: Client) -> Any:
        meta = {TASK: running.task, "agent-sidecar.io/approval_id": approval_id}
        return await client.call_tool("notes.purge", {}, meta=meta)

    done = with_client(running.url, by_id, mode="legacy")
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"
    assert notes.tool_calls == ["purge"]  # the counter sees a real run
    records = calls(running)
    assert [r["outcome"]["code"] for r in records] == ["approval_required"] * 2 + ["ok"]
    assert [r["outcome"]["relayed"] for r in records] == [False, False, True]


def _planted_gateway(
    start_sidecar: Any, tools: Any, tmp_path: Any, planting: Any, *, stdio: bool
) -> tuple[Any, str, str]:
    """A sidecar in front of the planting upstream (its tracker over stdio when ``stdio``):
    the running sidecar, its MCP endpoint and a task."""
    overrides = gateway_overrides(tmp_path, planting, stdio=stdio)
    if stdio:
        command = [sys.executable, "-m", "tests.support.mcp_planting", "tracker"]
        overrides["mcp_servers"]["tracker"]["command"] = command
    overrides["approvals"] = {"console_url": CONSOLE}
    running = start_sidecar(tools.url, **overrides)
    return running, endpoint_url(running), running.client().start_task("look").task_id


@pytest.mark.parametrize("transport", ["http", "stdio"])
@pytest.mark.parametrize("mode", [MODERN, "legacy"])
def test_review_M2_an_upstream_cannot_speak_in_the_sidecars_meta(
    start_sidecar, tools, tmp_path, transport, mode
):
    """An upstream plants agent-sidecar.io/* keys (a phishing approval link, a decision id)
    in its tool's definition, its result and its content: none reaches the agent; its own
    keys do; the one decision id is the sidecar's, joining the audit record."""
    from tests.support.mcp_planting import EVIL_URL, planting_http_server

    with planting_http_server() as planting:
        running, url, task = _planted_gateway(
            start_sidecar, tools, tmp_path, planting, stdio=transport == "stdio"
        )
        server = "tracker" if transport == "stdio" else "notes"

        async def run(client: Client) -> Any:
            listed = await client.list_tools(meta={TASK: task}) if mode == MODERN else None
            listed = listed or await client.list_tools()
            called = await client.call_tool(f"{server}.search", {"query": "q"}, meta={TASK: task})
            return listed, called

        listed, result = with_client(url, run, mode=mode)
    assert isinstance(result, CallToolResult) and result.content[0].text == "found: q"
    dumped = json.dumps(
        [result.model_dump(by_alias=True), listed.model_dump(by_alias=True)], default=str
    )
    assert EVIL_URL not in dumped and "01M80X1VR5QTVTZXSGFGNHPQKH" not in dumped
    assert "ap-01M80X1VR5QTVTZXSGFGNHPQKG" not in dumped
    assert result.meta is not None and result.meta["example.org/kept"]
    sidecar_keys = {k for k in result.meta if k.lower().startswith("agent-sidecar.io/")}
    assert sidecar_keys == {DECISION_META}
    record = [r for r in calls(running) if r["action"]["name"] == f"{server}.search"][-1]
    assert result.meta[DECISION_META] == record["decision_id"]
    assert result.content[0].meta == {"example.org/kept": "an upstream's own key is relayed"}
    [tool] = [t for t in listed.tools if t.name == f"{server}.search"]
    assert tool.meta == {"example.org/kept": "an upstream's own key is relayed"}


def test_review_L2_a_restart_sharing_the_key_file_accepts_the_state(gateway, tmp_path):
    """mcp.request_state_key_file: the sidecar after a restart (or a replica) with the same
    file accepts the state the first one issued, and relays the approved retry."""
    key_file = tmp_path / "request-state.key"
    key_file.write_bytes(b"k3y-" * 12)
    key_file.chmod(0o600)
    mcp = {"request_state_key_file": str(key_file)}
    first_sidecar = gateway(mcp=mcp)
    first = first_round(first_sidecar)
    approval_id = approval_of(first)["id"]
    task = first_sidecar.task
    first_sidecar.stop()
    second = gateway.again(mcp=mcp)
    with second.approvals() as approvals:
        approvals.approve(approval_id, reason="ok")
    done = retry(second, first.request_state, responses=ACCEPT, task=task)
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"
    assert [r["outcome"]["code"] for r in calls(second)] == ["approval_required", "ok"]


def test_review_L2_without_the_key_file_a_restart_refuses_the_state_the_id_still_works(
    gateway,
):
    """The per-process key: another process refuses the state (-32602, audited); the agent
    retries by the approval id the first answer's _meta carried."""
    first_sidecar = gateway()
    first = first_round(first_sidecar)
    approval_id = approval_of(first)["id"]
    task = first_sidecar.task
    first_sidecar.stop()
    second = gateway.again()
    with second.approvals() as approvals:
        approvals.approve(approval_id, reason="ok")
    refused = retry(second, first.request_state, responses=ACCEPT, task=task)
    assert isinstance(refused, MCPError) and refused.code == INVALID_PARAMS
    assert "approval_id" not in refused.error.data  # nothing from an unverified state

    async def by_id(client: Client) -> Any:
        meta = {TASK: task, "agent-sidecar.io/approval_id": approval_id}
        return await client.call_tool("notes.purge", {}, meta=meta)

    done = with_client(second.url, by_id, mode="legacy")
    assert isinstance(done, CallToolResult) and done.content[0].text == "purged"


def test_review_L2_a_key_file_too_short_stops_the_start(tmp_path):
    """``agent-sidecar serve`` (its own process: a start that fails leaves nothing behind in
    the test) refuses a key file under 32 bytes, naming the setting, never the key."""
    import yaml

    from tests.support.cli import ROOT, cli

    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"sixteen-bytes-ok")
    config = {
        "identity": {"mode": "static", "spiffe_id": "spiffe://example.org/agent"},
        "server": {"listen": [f"unix://{tmp_path}/agent.sock"]},
        "admin": {"listen": ""},
        "audit": {"path": str(tmp_path / "audit.log")},
        "state": {"dir": str(tmp_path / "state")},
        "policy": {"dir": str(ROOT / "rego")},
        "mcp": {"listen": "127.0.0.1:0", "request_state_key_file": str(key_file)},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    ran = cli("serve", "--config", str(tmp_path / "c.yaml"), timeout=60)
    assert ran.returncode != 0
    assert "mcp.request_state_key_file" in ran.stderr and "shorter than 32 bytes" in ran.stderr
    assert "sixteen" not in ran.stderr + ran.stdout


def test_review_L3_a_bad_state_is_audited_with_its_caller(gateway):
    running = gateway()
    first = first_round(running)
    for bad in _tampered(first.request_state):
        refused = retry(running, bad, responses=ACCEPT)
        assert isinstance(refused, MCPError) and refused.code == INVALID_PARAMS
    records = calls(running)[1:]
    assert len(records) == len(_tampered("a.b.c"))
    caller = calls(running)[0]["subject"]["spiffe_id"]
    for record in records:
        assert record["outcome"]["code"] == "malformed_request"
        assert record["subject"]["spiffe_id"] == caller
        assert record["action"]["name"] == "notes.purge"


def test_review_L7_pending_rounds_are_not_counted_against_the_task(gateway):
    """input.task.calls: the first round counts the call, the relayed retry counts; a
    pending round (or a declined or mismatched one) of the same approval does not."""
    running = gateway()
    first = first_round(running)
    approval_id = approval_of(first)["id"]
    for _ in range(3):
        pending = retry(running, first.request_state, responses=ACCEPT)
        assert isinstance(pending, InputRequiredResult)
    with running.approvals() as approvals:
        approvals.approve(approval_id, reason="ok")
    done = retry(running, first.request_state, responses=ACCEPT)
    assert isinstance(done, CallToolResult)

    async def search(client: Client) -> Any:
        return await client.call_tool("notes.search", {"query": "x"}, meta={TASK: running.task})

    with_client(running.url, search, mode=MODERN)
    records = calls(running)
    assert [r["task"]["calls"] for r in records[:-1]] == [0, 1, 1, 1, 1]
    assert records[-1]["task"]["calls"] == 2  # the purge once, not five times


@pytest.mark.parametrize("mode", [MODERN, "legacy"])
def test_review_an_upstream_error_cannot_pass_for_the_sidecars_step_up(
    start_sidecar, tools, tmp_path, mode
):
    """Found after the M2 fix: an upstream's JSON-RPC error was relayed as is, so an upstream
    could answer with the sidecar's -32011 and an ``approval_url`` of its choosing in the
    data, and the agent would take it for the sidecar's step-up. Now a code in the sidecar's
    band becomes -32603 (the upstream's code kept as ``upstream_code``), and an approval id,
    a link and the sidecar's _meta keys never come from an upstream; its other data does."""
    from tests.support.mcp_planting import EVIL_URL, planting_http_server

    with planting_http_server() as planting:
        running, url, task = _planted_gateway(start_sidecar, tools, tmp_path, planting, stdio=True)

        async def run(client: Client) -> Any:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("tracker.forge", {}, meta={TASK: task})
            return raised.value.error

        error = with_client(url, run, mode=mode)
    assert error.code == -32603
    assert error.data["upstream_code"] == -32011
    assert error.data["retry_after_s"] == 7  # the upstream's own data is relayed
    assert "approval_url" not in error.data and "approval_id" not in error.data
    assert EVIL_URL not in json.dumps(error.model_dump(by_alias=True), default=str)
    record = [r for r in calls(running) if r["action"]["name"] == "tracker.forge"][-1]
    assert record["outcome"]["code"] == "upstream_error"
    assert record["upstream"]["error"] == {"code": -32011}
