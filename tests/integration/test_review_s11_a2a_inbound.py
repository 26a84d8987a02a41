"""Review s11 of the inbound A2A listener, findings 3, 4, 5 and the inbound half of 6: one
regression test per finding against the real listener (TLS, real SVIDs, an unmodified a2a-sdk
agent server on loopback, a hostile agent on a real socket), with the hostile variants.

3: every message.referenceTaskIds id must be the caller's own (bounded).
4: inbound obligations are applied (``redact`` on what the agent receives, ``redact_response``
   on what the caller receives, unary and SSE across events) or the call is refused.
5: a caller's push-notification URL is a policy fact; the shipped rego denies any host
   data.agentsidecar.a2a.inbound_push_hosts does not list for this agent.
6: a streamed answer is scanned for ids once per byte (not once per chunk)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import threading
import uuid

import httpx
import pytest
import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext, SimpleRequestContextBuilder
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from aiohttp import web
from starlette.applications import Starlette

from sidecar.a2a import inbound as inbound_module
from sidecar.a2a import inbound_answer, task_owners
from tests.conftest import REGO
from tests.integration.test_a2a_inbound import AGENT, INTERN, PLANNER, client_tls, post, records
from tests.support.a2a_inbound_agent import agent_card
from tests.support.policies import write_policy

BILLING = "spiffe://demo.example/agent/billing"  # the shipped data's inbound agent

# Every a2a_inbound call allowed; the skill picks the obligations under test.
POLICY = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

_obligations := {
	"redact": {"log": "full", "redact": ["email"]},
	"answer": {"log": "full", "redact_response": ["email"]},
	"both": {"log": "full", "redact": ["email"], "redact_response": ["email"]},
	"cred": {"log": "full", "credential": {"audience": "https://billing.example", "ttl_s": 60}},
	"tokens": {"log": "full", "max_tokens": 64},
}

decision := {"effect": "allow", "obligations": obligations} if {
	input.action.kind == "a2a_inbound"
	obligations := object.get(_obligations, input.inbound.skill, {"log": "full"})
}
"""


class _Executor(AgentExecutor):
    """Records the text it receives; "task X": a completed task whose artifact is the
    caller's secret; "peek": the artifacts of the tasks the SDK loaded from referenceTaskIds;
    "echo X": X; "split": one artifact streamed in two chunks, an email split between them."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        self._texts.append(text)
        caller = context.call_context.state.get("headers", {}).get("x-agent-sidecar-caller", "")
        if text.startswith("task "):
            task = context.current_task or new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
            updater = TaskUpdater(event_queue, task.id, task.context_id)
            await updater.add_artifact([new_text_part(f"SECRET of {caller}: {text[5:]}")])
            await updater.complete()
            return
        if text == "split":
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
            updater = TaskUpdater(event_queue, task.id, task.context_id)
            await updater.add_artifact([new_text_part("write to ali")], artifact_id="a1")
            await updater.add_artifact(
                [new_text_part("ce@example.com please")],
                artifact_id="a1",
                append=True,
                last_chunk=True,
            )
            await updater.complete()
            return
        if text == "peek":
            related = context.related_tasks or []
            answer = f"related: {[p.text for t in related for a in t.artifacts for p in a.parts]}"
        else:
            answer = text.removeprefix("echo ")
        await event_queue.enqueue_event(new_text_message(answer, context_id=context.context_id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


class RefAgent:
    """The SDK agent with its documented should_populate_referred_tasks=True."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.texts: list[str] = []
        store = InMemoryTaskStore()
        handler = DefaultRequestHandler(
            agent_executor=_Executor(self.texts),
            task_store=store,
            agent_card=agent_card(self.url),
            request_context_builder=SimpleRequestContextBuilder(
                should_populate_referred_tasks=True, task_store=store
            ),
        )
        app = Starlette(routes=create_jsonrpc_routes(handler, "/"))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=lambda: self.server.run(sockets=[self.sock]), daemon=True
        )


@pytest.fixture
def ref_agent():
    agent = RefAgent()
    agent.thread.start()
    for _ in range(1000):
        if agent.server.started:
            break
        threading.Event().wait(0.01)
    yield agent
    agent.server.should_exit = True
    agent.thread.join(10)
    agent.sock.close()


@pytest.fixture
def listener(start_jwt_sidecar, ref_agent, tmp_path):
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": ref_agent.url, "agent_id": AGENT},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


def send(text: str, skill: str = "plain", method: str = "SendMessage", **fields) -> dict:
    message = {
        "role": "ROLE_USER",
        # Not digits: a 13-19 digit id starting 2-6 passes Luhn one time in ten (a card).
        "messageId": f"m-{uuid.uuid4().hex}",
        "parts": [{"text": text}],
        "metadata": {"skill": skill},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message | fields}}


def code_of(answer: httpx.Response) -> str:
    return answer.json()["error"]["data"]["code"]


def sse_events(running, body: dict, tls) -> list[dict]:
    with (
        httpx.Client(verify=tls, timeout=30) as http,
        http.stream("POST", running.url, json=body, headers={"A2A-Version": "1.0"}) as s,
    ):
        assert s.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]


# --- 3: referenceTaskIds name the caller's own tasks only --------------------------------


def test_review_s11_3_reference_task_ids_of_another_caller_are_refused(
    listener, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    intern = client_tls(authority, tmp_path, INTERN)
    made = post(listener, send("task IBAN DE89 3704 0044 0532 0130 00"), tls=planner)
    theirs = made.json()["result"]["task"]["id"]
    mine = post(listener, send("task intern note"), tls=intern).json()["result"]["task"]["id"]
    seen_before = len(ref_agent.texts)

    for refs in ([theirs], [mine, theirs], [theirs, mine], ["no-such-task"]):
        peek = post(listener, send("peek", referenceTaskIds=refs), tls=intern)
        assert code_of(peek) == "task_not_owned", peek.text
        assert peek.json()["error"]["code"] == -32001  # A2A TaskNotFound
        assert "SECRET" not in peek.text and "DE89" not in peek.text
    assert len(ref_agent.texts) == seen_before  # none reached the agent

    own = post(listener, send("peek", referenceTaskIds=[mine]), tls=intern)
    assert f"SECRET of {INTERN}: intern note" in own.text and "DE89" not in own.text
    found = records(listener.audit_path, 7)
    assert [r["outcome"]["code"] for r in found[2:7]] == ["task_not_owned"] * 4 + ["ok"]
    assert found[6]["input"]["action"]["arguments"]["reference_task_ids"] == 1


@pytest.mark.parametrize(
    ("refs", "code"),
    [
        ([f"t-{i}" for i in range(65)], "too_many_references"),
        ([f"t-{i}" for i in range(10_000)], "too_many_references"),
        ("t-1", "malformed_request"),
        ({"id": "t-1"}, "malformed_request"),
        ([7], "malformed_request"),
        ([""], "malformed_request"),
        (["t" * 257], "malformed_request"),
        ([None], "malformed_request"),
        ([f"t-{i}" for i in range(64)], "task_not_owned"),  # at the bound: each looked up
    ],
    ids=["65", "10000", "string", "object", "int", "empty", "long", "null", "64-unknown"],
)
def test_review_s11_3_hostile_reference_task_ids_are_refused_with_one_record(
    listener, ref_agent, authority, tmp_path, refs, code
):
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(listener, send("peek", referenceTaskIds=refs), tls=planner)
    assert code_of(answer) == code, answer.text
    [record] = records(listener.audit_path, 1)
    assert record["outcome"]["code"] == code
    assert ref_agent.texts == []


# --- 4: inbound obligations are applied, or the call refused -----------------------------


def test_review_s11_4_redact_reaches_the_agent_redacted_and_the_record_says_so(
    listener, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    text = "echo mail alice@example.com about it"
    answer = post(listener, send(text, skill="redact"), tls=planner)
    assert answer.status_code == 200, answer.text
    [received] = ref_agent.texts
    assert "alice@example.com" not in received and "[REDACTED:email]" in received
    [record] = records(listener.audit_path, 1)
    assert record["decision"]["obligations"]["redact"] == ["email"]
    assert record["input"]["action"]["arguments"]["parts"]["chars"] == len(text)  # decided on
    sent = record["action"]["arguments"]["value"]  # log: full
    assert sent["parts"]["chars"] == len(received)  # what the agent was sent
    assert "alice@example.com" not in record["intent"]  # nor in the task it opened
    assert "alice@example.com" not in listener.audit_path.read_text()


def test_review_s11_4_redact_response_applies_to_a_unary_answer(
    listener, ref_agent, authority, tmp_path
):
    """The probe: allowed with redact_response, the caller's answer held the email."""
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(listener, send("echo write bob@example.com", skill="answer"), tls=planner)
    assert answer.status_code == 200, answer.text
    assert ref_agent.texts == ["echo write bob@example.com"]  # the request was not redacted
    assert "bob@example.com" not in answer.text and "[REDACTED:email]" in answer.text
    assert int(answer.headers["content-length"]) == len(answer.content)
    [record] = records(listener.audit_path, 1)
    assert record["outcome"]["code"] == "ok"
    assert record["upstream"]["bytes"] == len(answer.content)  # the bytes the caller got


def test_review_s11_4_both_obligations_together(listener, ref_agent, authority, tmp_path):
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(listener, send("task for carol@example.com", skill="both"), tls=planner)
    assert "carol@example.com" not in ref_agent.texts[0]
    assert "carol@example.com" not in answer.text
    assert answer.json()["result"]["task"]["id"]  # identifiers are never redacted


def test_review_s11_4_a_secret_split_across_two_sse_events_never_passes(
    listener, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    events = sse_events(listener, send("split", "answer", "SendStreamingMessage"), planner)
    texts = [
        part["text"]
        for e in events
        for part in e["result"].get("artifactUpdate", {}).get("artifact", {}).get("parts", [])
    ]
    whole = "".join(texts)
    assert "alice@example.com" not in whole and "ce@example.com" not in whole
    assert whole == "write to [REDACTED:email] please"
    task_id = next(e["result"]["task"]["id"] for e in events if "task" in e["result"])
    state = events[-1]["result"]["statusUpdate"]["status"]["state"]
    assert state == "TASK_STATE_COMPLETED"  # the stream still ends as the agent ended it
    again = post(listener, {"jsonrpc": "2.0", "id": 2, "method": "GetTask",
                            "params": {"id": task_id}}, tls=planner)  # fmt: skip
    assert again.json()["result"]["id"] == task_id  # ids recorded as the caller's


def test_review_s11_4_without_redact_response_a_split_stream_passes_as_sent(
    listener, ref_agent, authority, tmp_path
):
    """Control: the stream is passed byte for byte when no obligation asks otherwise."""
    planner = client_tls(authority, tmp_path, PLANNER)
    events = sse_events(listener, send("split", "plain", "SendStreamingMessage"), planner)
    joined = json.dumps(events)
    assert "write to ali" in joined and "ce@example.com please" in joined


@pytest.mark.parametrize(("skill", "name"), [("cred", "credential"), ("tokens", "max_tokens")])
@pytest.mark.parametrize("method", ["SendMessage", "SendStreamingMessage"])
def test_review_s11_4_an_obligation_the_listener_cannot_apply_refuses_the_call(
    listener, ref_agent, authority, tmp_path, skill, name, method
):
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(listener, send("echo hello", skill, method), tls=planner)
    assert code_of(answer) == "obligation_unsupported", answer.text
    assert name in answer.json()["error"]["message"]
    assert ref_agent.texts == []  # never relayed without its obligation
    [record] = records(listener.audit_path, 1)
    assert record["outcome"]["code"] == "obligation_unsupported"
    assert record["outcome"]["relayed"] is False
    assert name in record["decision"]["obligations"]  # the record: what policy asked ...
    assert record["decision"]["effect"] == "allow"  # ... and that it did not happen


# --- 5: a caller's push-notification URL is a policy fact ---------------------------------


@pytest.fixture
def shipped(start_jwt_sidecar, ref_agent, tmp_path):
    """The shipped rego, this agent billing, hooks.demo.example its one allowed push host."""
    rego = tmp_path / "rego"
    shutil.copytree(REGO, rego)
    data_file = rego / "agentsidecar" / "data.json"
    data = json.loads(data_file.read_text())
    data["a2a"]["inbound_push_hosts"] = {BILLING: ["hooks.demo.example"]}
    data_file.write_text(json.dumps(data))
    running = start_jwt_sidecar(
        policy={"dir": str(rego)},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": ref_agent.url, "agent_id": BILLING},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


def with_push(url: str) -> dict:
    body = send("echo hello", skill="lookup")
    body["params"]["configuration"] = {"taskPushNotificationConfig": {"url": url, "token": "t"}}
    return body


@pytest.mark.parametrize(
    ("url", "host", "port"),  # port: the effective one (review s12, h2)
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", 80),
        ("http://127.0.0.1:9901/quitquitquit", "127.0.0.1", 9901),
        ("http://[::1]:8080/", "::1", 8080),
        ("http://localhost/", "localhost", 80),
        ("https://10.0.0.7/", "10.0.0.7", 443),
        ("http://2852039166/", "2852039166", 80),  # 169.254.169.254 as one number
        ("https://HOOKS.demo.example.evil.example/", "hooks.demo.example.evil.example", 443),
    ],
)
def test_review_s11_5_a_push_url_to_an_unlisted_host_is_denied_by_the_shipped_policy(
    shipped, ref_agent, authority, tmp_path, url, host, port
):
    planner = client_tls(authority, tmp_path, PLANNER)
    answer = post(shipped, with_push(url), tls=planner)
    assert code_of(answer) == "inbound_denied", answer.text
    assert "inbound_push_hosts" in answer.json()["error"]["message"]
    assert ref_agent.texts == []
    [record] = records(shipped.audit_path, 1)
    push = {"scheme": url.split(":", 1)[0], "host": host, "port": port}
    assert record["action"]["inbound"]["push_url"] == push  # the shipped policy logs no input
    assert record["decision"]["effect"] == "deny"


def test_review_s11_5_a_listed_push_host_and_no_push_url_are_allowed(
    shipped, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    plain = post(shipped, send("echo hello", skill="lookup"), tls=planner)
    assert plain.status_code == 200 and "result" in plain.json(), plain.text
    listed = post(shipped, with_push("https://hooks.demo.example/a2a"), tls=planner)
    assert "error" not in listed.json() or code_of(listed) != "inbound_denied", listed.text
    found = records(shipped.audit_path, 2)
    assert "push_url" not in found[0]["action"]["inbound"]
    assert found[1]["decision"]["effect"] == "allow"
    assert found[1]["action"]["inbound"]["push_url"]["host"] == "hooks.demo.example"


def test_review_s11_5_the_push_url_is_in_the_policy_input_and_its_arguments(
    listener, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    post(listener, with_push("http://[::1]:8080/x"), tls=planner)
    [record] = records(listener.audit_path, 1)
    push = {"scheme": "http", "host": "::1", "port": 8080}
    assert record["input"]["inbound"]["push_url"] == push
    assert record["input"]["action"]["arguments"]["push_url"] == push


def test_review_s11_5_push_config_set_on_an_own_task_is_checked_too(
    shipped, ref_agent, authority, tmp_path
):
    planner = client_tls(authority, tmp_path, PLANNER)
    task = post(shipped, send("task x", skill="lookup"), tls=planner).json()["result"]["task"]
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "CreateTaskPushNotificationConfig",
        "params": {"taskId": task["id"], "url": "http://169.254.169.254/", "id": "c1"},
    }
    answer = post(shipped, body, tls=planner)
    assert code_of(answer) == "inbound_denied", answer.text
    [_, record] = records(shipped.audit_path, 2)
    assert record["action"]["inbound"]["push_url"]["host"] == "169.254.169.254"


# --- 6: a streamed answer is scanned once per byte ----------------------------------------


class DripAgent:
    """A hostile agent on a real socket: every POST answers SSE ``events`` written in
    ``piece``-byte writes, each drained before the next."""

    def __init__(self, events: bytes, piece: int) -> None:
        self.events, self.piece = events, piece
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(self.events), self.piece):
            await response.write(self.events[start : start + self.piece])
        await response.write_eof()
        return response

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/", self._post)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class CountingPattern:
    """An event-end pattern that counts the bytes each search is given to scan."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def finditer(self, buffer: bytes, pos: int = 0, *args: int):
        self.scanned += len(buffer) - pos
        return self.pattern.finditer(buffer, pos, *args)


def drip_listener(start_jwt_sidecar, tmp_path, events: bytes, piece: int):
    agent = DripAgent(events, piece)
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": agent.url, "agent_id": AGENT},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return agent, running


def big_event(size: int) -> bytes:
    head = (
        b'data: {"jsonrpc":"2.0","id":1,"result":{"message":{"messageId":"m",'
        b'"role":"ROLE_AGENT","parts":[{"text":"'
    )
    tail = b'"}]}}}\r\n\r\n'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_review_s11_6_one_large_event_dripped_in_small_pieces_is_scanned_linearly(
    start_jwt_sidecar, authority, tmp_path, monkeypatch
):
    counters = [CountingPattern(task_owners._EVENT_END), CountingPattern(inbound_answer._EVENT_END)]
    monkeypatch.setattr(task_owners, "_EVENT_END", counters[0])
    monkeypatch.setattr(inbound_answer, "_EVENT_END", counters[1])
    size = 2 * 1024 * 1024
    agent, running = drip_listener(start_jwt_sidecar, tmp_path, big_event(size), 1024)
    try:
        planner = client_tls(authority, tmp_path, PLANNER)
        events = sse_events(running, send("hi", method="SendStreamingMessage"), planner)
        [event] = events
        assert len(event["result"]["message"]["parts"][0]["text"]) > size - 200
        # Each byte looked at a bounded number of times (the old pass-back rescanned every
        # byte held on every chunk: tens of MiB here, growing with the square of the size).
        assert sum(c.scanned for c in counters) <= 4 * size
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "ok" and record["upstream"]["bytes"] == size
    finally:
        agent.stop()


def test_review_s11_6_ids_split_across_pieces_are_recorded_before_the_caller_sees_them(
    start_jwt_sidecar, authority, tmp_path
):
    """Hostile: every piece 3 bytes, so each event end (\\r\\n\\r\\n) is split over pieces."""
    event = {"jsonrpc": "2.0", "id": 1, "result": {"task": {"id": "t-drip", "contextId": "c-1",
             "status": {"state": "TASK_STATE_WORKING"}}}}  # fmt: skip
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for _ in range(3))
    agent, running = drip_listener(start_jwt_sidecar, tmp_path, body, 3)
    try:
        planner = client_tls(authority, tmp_path, PLANNER)
        intern = client_tls(authority, tmp_path, INTERN)
        events = sse_events(running, send("hi", method="SendStreamingMessage"), planner)
        assert events == [event] * 3
        mixed = post(running, send("hi", contextId="c-1"), tls=intern)
        assert code_of(mixed) == "task_not_owned"  # recorded as the planner's
    finally:
        agent.stop()


def test_review_s11_6_an_event_over_the_bound_is_never_passed_on_unrecorded(
    start_jwt_sidecar, authority, tmp_path, monkeypatch
):
    """The old pass-back sent an event over the bound on, its ids unrecorded."""
    monkeypatch.setattr(inbound_module, "MAX_ANSWER_BYTES", 4096)
    agent, running = drip_listener(start_jwt_sidecar, tmp_path, big_event(64 * 1024), 1024)
    try:
        planner = client_tls(authority, tmp_path, PLANNER)
        received = bytearray()
        body = send("hi", method="SendStreamingMessage")
        with (
            contextlib.suppress(httpx.RemoteProtocolError),  # the stream is cut short
            httpx.Client(verify=planner, timeout=30) as http,
            http.stream("POST", running.url, json=body, headers={"A2A-Version": "1.0"}) as s,
        ):
            for piece in s.iter_bytes():
                received += piece
        assert b"xxxx" not in received
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "agent_unavailable"
    finally:
        agent.stop()


# --- review 2, finding 3: the id and the SSE lines go through the obligations too ---------


class ScriptedAgent(DripAgent):
    """A hostile agent on a real socket: records each request body, answers ``events`` as
    ``content_type`` (one write per ``piece`` bytes)."""

    def __init__(self, events: bytes, content_type: str, piece: int = 1 << 20) -> None:
        self.content_type = content_type
        self.bodies: list[dict] = []
        super().__init__(events, piece)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        response = web.StreamResponse(headers={"Content-Type": self.content_type})
        await response.prepare(request)
        for start in range(0, len(self.events), self.piece):
            await response.write(self.events[start : start + self.piece])
        await response.write_eof()
        return response


def scripted_listener(start_jwt_sidecar, tmp_path, agent: ScriptedAgent):
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
        a2a_inbound={"listen": "127.0.0.1:0", "agent_url": agent.url, "agent_id": AGENT},
    )
    running.url = f"https://127.0.0.1:{running.sidecar.a2a_inbound.port}/"
    return running


def raw_stream(running, body: dict, tls) -> bytes:
    received = bytearray()
    with (
        httpx.Client(verify=tls, timeout=30) as http,
        http.stream("POST", running.url, json=body, headers={"A2A-Version": "1.0"}) as s,
    ):
        for piece in s.iter_bytes():
            received += piece
    return bytes(received)


def _reply(rpc_id, text: str = "ok") -> dict:
    message = {"messageId": "x", "role": "ROLE_AGENT", "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": rpc_id, "result": {"message": message}}


MAIL = "bob@example.com"


@pytest.mark.parametrize("rpc_id", [MAIL, f"req {MAIL} 7", "alice@example.com"])
@pytest.mark.parametrize("method", ["SendMessage", "SendStreamingMessage"])
def test_review2_3a_under_redact_the_agent_receives_the_callers_id_redacted(
    start_jwt_sidecar, authority, tmp_path, rpc_id, method
):
    """The old listener redacted the params but sent the caller's id to the agent as it was.
    The caller's answer still comes back under its own id (the agent echoes the one it got)."""
    streaming = method == "SendStreamingMessage"
    echoed = _reply("[REDACTED:email]")
    events = b"data: " + json.dumps(echoed).encode() + b"\n\n" if streaming else b""
    agent = ScriptedAgent(
        events or json.dumps(echoed).encode(),
        "text/event-stream" if streaming else "application/json",
    )
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        body = send("echo hi", skill="redact", method=method) | {"id": rpc_id}
        if streaming:
            [event] = sse_events(running, body, planner)
        else:
            event = post(running, body, tls=planner).json()
        [sent] = agent.bodies
        assert "@example.com" not in json.dumps(sent)
        assert sent["id"] == rpc_id.replace(MAIL, "[REDACTED:email]").replace(
            "alice@example.com", "[REDACTED:email]"
        )
        assert event["id"] == rpc_id  # the caller's own, not the agent's
        assert event["result"]["message"]["parts"][0]["text"] == "ok"
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "ok"
    finally:
        agent.stop()


def test_review2_3a_an_id_without_a_class_reaches_the_agent_as_sent(
    listener, ref_agent, authority, tmp_path
):
    """Control (the real SDK agent): nothing to redact in the id, nothing changed."""
    planner = client_tls(authority, tmp_path, PLANNER)
    for rpc_id in (7, "req-7"):
        answer = post(listener, send("echo hi", skill="redact") | {"id": rpc_id}, tls=planner)
        assert answer.json()["id"] == rpc_id
        events = sse_events(
            listener, send("echo hi", "redact", "SendStreamingMessage") | {"id": rpc_id}, planner
        )
        assert events and all(e["id"] == rpc_id for e in events)


# Non-data lines of an SSE event: comments, id:, event:, retry:, and each of them alone.
_HOSTILE_SSE = (
    f": note {MAIL}\nid: {MAIL}\nevent: {MAIL}\nretry: 1000\n\n"
    f": {MAIL}\r\n\r\n"
    f"id: {MAIL}\n\n"
    f"event: {MAIL}\n\n"
    f"event: {MAIL}\r\nid: {MAIL}\r\n: {MAIL}\r\ndata: "
    + json.dumps(_reply(f"agent {MAIL}", f"hello {MAIL}"))
    + "\r\n\r\n"
    f": trailing {MAIL}"  # the stream ends inside an event
).encode()


@pytest.mark.parametrize("piece", [1 << 20, 7], ids=["whole", "7-byte-pieces"])
def test_review2_3b_under_redact_response_no_sse_line_carries_a_class(
    start_jwt_sidecar, authority, tmp_path, piece
):
    """The old listener passed an event without a data line (a comment, a bare id: or
    event:) verbatim, and the agent's id inside a data event as the agent wrote it."""
    agent = ScriptedAgent(_HOSTILE_SSE, "text/event-stream", piece)
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        raw = raw_stream(running, send("hi", "answer", "SendStreamingMessage"), planner)
        assert b"example.com" not in raw
        data = [line for line in raw.split(b"\n") if line.startswith(b"data:")]
        [event] = [json.loads(line[5:]) for line in data]
        assert event["id"] == 1  # the caller's
        assert event["result"]["message"]["parts"][0]["text"] == "hello [REDACTED:email]"
        others = [line for line in raw.split(b"\n") if line and not line.startswith(b"data:")]
        assert set(others) == {b":"}  # keep-alives only: nothing the redactor has not seen
        [record] = records(running.audit_path, 1)
        assert record["outcome"]["code"] == "ok"
        assert record["upstream"]["bytes"] == len(raw)
    finally:
        agent.stop()


def test_review2_3b_without_an_obligation_the_stream_passes_byte_for_byte(
    start_jwt_sidecar, authority, tmp_path
):
    """Control: no redact_response and the id unchanged: every line as the agent sent it,
    but the agent's JSON-RPC id, which goes back as the caller's (s12 h3: test_s12_a2a_*)."""
    agent = ScriptedAgent(_HOSTILE_SSE, "text/event-stream")
    reply = _reply(f"agent {MAIL}", f"hello {MAIL}")
    callers = {"jsonrpc": "2.0", "id": 1, "result": reply["result"]}
    expected = _HOSTILE_SSE.replace(
        json.dumps(reply).encode(), json.dumps(callers, separators=(",", ":")).encode()
    )
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        assert expected != _HOSTILE_SSE
        assert raw_stream(running, send("hi", "plain", "SendStreamingMessage"), planner) == (
            expected
        )
    finally:
        agent.stop()


_MISSING = object()


@pytest.mark.parametrize(
    "agent_id",
    [MAIL, None, {"x": MAIL}, [MAIL], "1", 1.0, True, 2, _MISSING],
    ids=["mail", "null", "object", "list", "string-1", "float", "true", "other-int", "missing"],
)
@pytest.mark.parametrize("skill", ["plain", "answer"])
def test_review2_3c_a_unary_answer_comes_back_under_the_callers_id(
    start_jwt_sidecar, authority, tmp_path, agent_id, skill
):
    """The old listener passed the agent's id through (_ECHO'd, even under redact_response):
    whatever the agent wrote there reached the caller."""
    reply = _reply(agent_id, f"to {MAIL}")
    if agent_id is _MISSING:
        del reply["id"]
    agent = ScriptedAgent(json.dumps(reply).encode(), "application/json")
    try:
        running = scripted_listener(start_jwt_sidecar, tmp_path, agent)
        planner = client_tls(authority, tmp_path, PLANNER)
        answer = post(running, send("hi", skill), tls=planner)
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["id"] == 1 and type(doc["id"]) is int and doc["jsonrpc"] == "2.0"
        text = doc["result"]["message"]["parts"][0]["text"]
        if skill == "answer":
            assert MAIL not in answer.text and text == "to [REDACTED:email]"
        else:
            assert text == f"to {MAIL}"  # no obligation: the result as the agent sent it
        assert int(answer.headers["content-length"]) == len(answer.content)
        [record] = records(running.audit_path, 1)
        assert record["upstream"]["bytes"] == len(answer.content)
    finally:
        agent.stop()
