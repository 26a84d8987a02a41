"""Real A2A agents and clients on the official a2a-sdk, for end-to-end tests, the demo and the
bench: nothing here speaks the wire format by hand.

Server: :class:`A2aAgent` is the SDK's Starlette JSON-RPC app (1.0 and 0.3 method names) and
its card route, under uvicorn on a free loopback port in a daemon thread. Each skill is a
:data:`Behaviour`; the skill of a message is its ``metadata.skill`` (or ``skillId``), else the
first word of its text. Ready-made behaviours: :func:`echo`, :func:`secret` (answers with a
key-shaped secret and an e-mail), :func:`streamed` (a Task with three artifact chunks, the
second holding :data:`SECRET`), :func:`hang` (never answers), :func:`drip` (a status update
every ``every_s``, forever). A custom behaviour gets an :class:`Incoming` (the text, the skill,
the HTTP headers the agent received — e.g. ``x-agent-sidecar-task`` behind an inbound
listener) and returns the answer's text, so an agent can call out (a tool through its own
sidecar) before answering. Every request's headers and body are kept in ``agent.seen``.

Client: :func:`ask` uses the unmodified SDK client: ``create_client(base_url)`` resolves the
card at ``BASE/.well-known/agent-card.json`` and sends to the URL *inside* the card, exactly
as a real agent does; :class:`Answer` gathers the texts and the final task state.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import (
    new_task_from_user_message,
    new_text_artifact_update_event,
    new_text_message,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

__all__ = [
    "SECRET",
    "SECRET_EMAIL",
    "A2aAgent",
    "Answer",
    "Behaviour",
    "Incoming",
    "ask",
    "ask_sync",
    "by_word",
    "drip",
    "echo",
    "hang",
    "replying",
    "running_agent",
    "secret",
    "streamed",
]

# Shaped like a provider key, so the sidecar's classifier finds it (class ``secret``).
SECRET = "sk-proj-A2aTestSecretDoNotLeak0123456789"
SECRET_EMAIL = "carol.peer@example.com"


@dataclass(frozen=True)
class Incoming:
    """One message as the agent's skill sees it."""

    text: str
    skill: str
    headers: Mapping[str, str]


# A behaviour answers a message: a text (sent as one Message), or it drives the queue itself.
Behaviour = Callable[[Incoming, RequestContext, EventQueue], Awaitable[None]]


def echo(prefix: str = "heard") -> Behaviour:
    """Answers a Message: ``PREFIX: TEXT``."""

    async def run(incoming: Incoming, _ctx: RequestContext, queue: EventQueue) -> None:
        await queue.enqueue_event(new_text_message(f"{prefix}: {incoming.text}"))

    return run


def replying(answer: Callable[[Incoming], Awaitable[str]]) -> Behaviour:
    """A behaviour from an async function of the message to the answer's text (it may call
    out first: a tool through the agent's own sidecar, another agent)."""

    async def run(incoming: Incoming, _ctx: RequestContext, queue: EventQueue) -> None:
        await queue.enqueue_event(new_text_message(await answer(incoming)))

    return run


def secret() -> Behaviour:
    """Answers a Message holding :data:`SECRET` and :data:`SECRET_EMAIL`."""

    async def run(_incoming: Incoming, _ctx: RequestContext, queue: EventQueue) -> None:
        await queue.enqueue_event(new_text_message(f"key {SECRET} for {SECRET_EMAIL}"))

    return run


async def _status(queue: EventQueue, task: Any, state: int) -> None:
    await queue.enqueue_event(
        TaskStatusUpdateEvent(
            task_id=task.id, context_id=task.context_id, status=TaskStatus(state=state)
        )
    )


def streamed() -> Behaviour:
    """A Task: three artifact chunks (the second holds :data:`SECRET`), then completed."""

    async def run(_incoming: Incoming, ctx: RequestContext, queue: EventQueue) -> None:
        assert ctx.message is not None
        task = ctx.current_task or new_task_from_user_message(ctx.message)
        await queue.enqueue_event(task)
        for i, chunk in enumerate(["part one, ", f"key {SECRET}, ", "done"]):
            await queue.enqueue_event(
                new_text_artifact_update_event(
                    task.id, task.context_id, "answer", chunk,
                    append=i > 0, last_chunk=i == 2, artifact_id="a1",
                )
            )  # fmt: skip
        await _status(queue, task, TaskState.TASK_STATE_COMPLETED)

    return run


def hang() -> Behaviour:
    """Never answers (until the agent stops)."""

    async def run(_incoming: Incoming, _ctx: RequestContext, _queue: EventQueue) -> None:
        await asyncio.Event().wait()

    return run


def drip(every_s: float = 0.2) -> Behaviour:
    """A Task that sends a working status every ``every_s`` and never completes."""

    async def run(_incoming: Incoming, ctx: RequestContext, queue: EventQueue) -> None:
        assert ctx.message is not None
        task = ctx.current_task or new_task_from_user_message(ctx.message)
        await queue.enqueue_event(task)
        while True:
            await _status(queue, task, TaskState.TASK_STATE_WORKING)
            await asyncio.sleep(every_s)

    return run


def by_word(words: Mapping[str, Behaviour], default: Behaviour) -> Behaviour:
    """One skill, many behaviours: chosen by the first word of the text (a granted skill
    can then hang, drip or stream in a test without granting more skills)."""

    async def run(incoming: Incoming, ctx: RequestContext, queue: EventQueue) -> None:
        behaviour = words.get(incoming.text.split(" ", 1)[0], default)
        await behaviour(incoming, ctx, queue)

    return run


def _skill_of(ctx: RequestContext, text: str, skills: Mapping[str, Behaviour]) -> str:
    metadata = MessageToDict(ctx.message).get("metadata", {}) if ctx.message else {}
    for key in ("skill", "skillId"):
        if isinstance(metadata.get(key), str) and metadata[key]:
            return metadata[key]
    word = text.split(" ", 1)[0]
    return word if word in skills else ""


class _Executor(AgentExecutor):
    def __init__(self, skills: Mapping[str, Behaviour]) -> None:
        self._skills = skills

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        skill = _skill_of(context, text, self._skills)
        state = context.call_context.state if context.call_context else {}
        incoming = Incoming(text=text, skill=skill, headers=dict(state.get("headers", {})))
        behaviour = self._skills.get(skill)
        if behaviour is None:
            await event_queue.enqueue_event(new_text_message(f"no skill {skill!r}"))
            return
        await behaviour(incoming, context, event_queue)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        if context.current_task is not None:
            await _status(event_queue, context.current_task, TaskState.TASK_STATE_CANCELED)


@dataclass
class Seen:
    """One POST the agent received."""

    headers: dict[str, str]
    body: Any = None


class _Recorder:
    """ASGI middleware keeping every POST's headers and JSON body."""

    def __init__(self, app: Any, seen: list[Seen]) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        messages, chunks, more = [], [], True
        while more:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        entry = Seen({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        try:
            entry.body = json.loads(b"".join(chunks))
        except ValueError:
            entry.body = None
        self._seen.append(entry)

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self._app(scope, replay, send)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class A2aAgent:
    """An A2A agent serving ``skills`` on a free loopback port until :meth:`stop`.

    ``card_url``: the URL its card advertises (default: where it listens). An agent behind an
    inbound listener keeps its own URL: the sidecar serves the card with its own.
    """

    def __init__(self, name: str, skills: Mapping[str, Behaviour], *, card_url: str = "") -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self.card = AgentCard(
            name=name,
            description=f"the {name} test agent",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(
                    url=card_url or self.url, protocol_binding="JSONRPC", protocol_version="1.0"
                )
            ],
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[
                AgentSkill(id=s, name=s, description=f"{name} {s}", tags=[name]) for s in skills
            ],
        )
        handler = DefaultRequestHandler(
            agent_executor=_Executor(dict(skills)),
            task_store=InMemoryTaskStore(),
            agent_card=self.card,
        )
        routes = [
            *create_agent_card_routes(self.card),
            *create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True),
        ]
        app = _Recorder(Starlette(routes=routes), self.seen)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(3000):  # a generous bound, polled on the thread
            if self._server.started:
                break
            self._thread.join(0.01)
        if not self._server.started:
            raise RuntimeError(f"the A2A agent {name} did not start")

    def card_dict(self) -> dict[str, Any]:
        """The card as JSON (what ``/.well-known/agent-card.json`` serves)."""
        return MessageToDict(self.card)

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(10)


@contextmanager
def running_agent(
    name: str, skills: Mapping[str, Behaviour], *, card_url: str = ""
) -> Iterator[A2aAgent]:
    agent = A2aAgent(name, skills, card_url=card_url)
    try:
        yield agent
    finally:
        agent.stop()


@dataclass
class Answer:
    """What the client got: every text (messages, artifacts, status messages) in order, the
    last task state seen (``""`` for a plain Message answer) and the raw events."""

    texts: list[str] = field(default_factory=list)
    state: str = ""
    events: list[Any] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def _collect(answer: Answer, event: Any) -> None:
    answer.events.append(event)
    doc = MessageToDict(event)
    for message in (
        doc.get("message"),
        doc.get("statusUpdate", {}).get("status", {}).get("message"),
    ):
        if message:
            answer.texts += [p["text"] for p in message.get("parts", []) if "text" in p]
    artifact = doc.get("artifactUpdate", {}).get("artifact", {})
    answer.texts += [p["text"] for p in artifact.get("parts", []) if "text" in p]
    task = doc.get("task", {})
    for artifact in task.get("artifacts", []):
        answer.texts += [p["text"] for p in artifact.get("parts", []) if "text" in p]
    state = task.get("status", {}).get("state") or doc.get("statusUpdate", {}).get(
        "status", {}
    ).get("state")
    if state:
        answer.state = state


async def ask(
    base_url: str,
    text: str,
    *,
    skill: str = "",
    headers: Mapping[str, str] | None = None,
    stream: bool = False,
    timeout_s: float = 30,
) -> Answer:
    """Send one message with the unmodified SDK client, resolving the card at ``base_url``.

    SDK and transport errors propagate (``a2a.client.errors``, ``httpx``) for the test to
    assert on."""
    message = Message(role=Role.ROLE_USER, message_id=f"m-{id(text)}", parts=[Part(text=text)])
    if skill:
        message.metadata.update({"skill": skill})
    answer = Answer()
    async with httpx.AsyncClient(headers=dict(headers or {}), timeout=timeout_s) as http:
        config = ClientConfig(streaming=stream, httpx_client=http)
        client = await create_client(base_url, client_config=config)
        async for event in client.send_message(SendMessageRequest(message=message)):
            _collect(answer, event)
    return answer


def ask_sync(base_url: str, text: str, **kwargs: Any) -> Answer:
    """:func:`ask` from synchronous code (a test body, the demo)."""
    return asyncio.run(ask(base_url, text, **kwargs))
