"""A real A2A peer agent for the outbound tests: the official a2a-sdk server (its Starlette
JSON-RPC routes, 1.0 and 0.3 names) under uvicorn on loopback, in a thread.

What it does depends on the first word of the message text:
``echo``: answers a Message repeating the text; ``leak``: answers a Message holding
:data:`PEER_SECRET_EMAIL`; ``stream``: a Task, three artifact chunks (the second holds the
e-mail) and a completed status; ``task``: a Task left working (to get and cancel);
``split``: a Task and the e-mail split across two ``append`` chunks, no ``lastChunk``,
then a completed status; ``big``: a Message of :data:`BIG_ANSWER_CHARS` characters;
``hang``: never answers; ``drip``: streams a status update every 0.2 s, forever.
Every request's headers and JSON body are kept in :attr:`PeerAgent.seen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn
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
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from starlette.applications import Starlette

__all__ = ["PEER_SECRET_EMAIL", "PeerAgent"]

PEER_SECRET_EMAIL = "carol.peer@example.com"
BIG_ANSWER_CHARS = 200_000


class _Executor(AgentExecutor):
    def __init__(self, hanging: asyncio.Event) -> None:
        self._hanging = hanging

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        word = text.split(" ", 1)[0]
        if word == "echo":
            await event_queue.enqueue_event(new_text_message(f"peer heard: {text}"))
        elif word == "leak":
            await event_queue.enqueue_event(new_text_message(f"write to {PEER_SECRET_EMAIL}"))
        elif word == "big":
            await event_queue.enqueue_event(new_text_message("y" * BIG_ANSWER_CHARS))
        elif word == "hang":
            await asyncio.Event().wait()
        elif word in ("stream", "task", "drip", "split"):
            assert context.message is not None
            task = context.current_task or new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
            if word == "task":
                await event_queue.enqueue_event(
                    TaskStatusUpdateEvent(
                        task_id=task.id,
                        context_id=task.context_id,
                        status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                    )
                )
                await asyncio.Event().wait()  # left working until cancelled
            if word == "drip":
                while True:
                    await asyncio.sleep(0.2)
                    await event_queue.enqueue_event(
                        TaskStatusUpdateEvent(
                            task_id=task.id,
                            context_id=task.context_id,
                            status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                        )
                    )
            chunks = ["part one, ", f"mail {PEER_SECRET_EMAIL}, ", "done"]
            if word == "split":
                half = len(PEER_SECRET_EMAIL) // 2
                chunks = [f"mail {PEER_SECRET_EMAIL[:half]}", f"{PEER_SECRET_EMAIL[half:]}, ok"]
            for i, chunk in enumerate(chunks):
                await event_queue.enqueue_event(
                    new_text_artifact_update_event(
                        task.id,
                        task.context_id,
                        "answer",
                        chunk,
                        append=i > 0,
                        last_chunk=word == "stream" and i == 2,
                        artifact_id="a1",
                    )
                )
            await event_queue.enqueue_event(
                TaskStatusUpdateEvent(
                    task_id=task.id,
                    context_id=task.context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED),
                )
            )
        else:
            await event_queue.enqueue_event(new_text_message("unknown request"))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        assert task is not None
        await event_queue.enqueue_event(
            TaskStatusUpdateEvent(
                task_id=task.id,
                context_id=task.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_CANCELED),
            )
        )


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    """ASGI middleware keeping every POST's headers and body."""

    def __init__(self, app: Any, seen: list[Seen]) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        chunks: list[bytes] = []
        more = True
        messages = []
        while more:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        entry = Seen(headers)
        with contextlib.suppress(ValueError):
            entry.body = json.loads(b"".join(chunks))
        self._seen.append(entry)

        async def replay() -> Any:
            if messages:
                return messages.pop(0)
            return await receive()

        await self._app(scope, replay, send)


class PeerAgent:
    """The peer, serving on a free loopback port until :meth:`stop`."""

    def __init__(self, *, port: int = 0, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (chain file, key file) to serve https at ``localhost`` (an SVID's DNS
        name); ``port``: a given port (a peer restarted with another certificate)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just closed
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        # The SDK's server logs each request context (the credential the sidecar sent) at
        # debug: that is the peer's log, not the sidecar's, and stays out of the secret scan.
        logging.getLogger("a2a").setLevel(logging.INFO)
        card = AgentCard(
            name="billing",
            description="a test billing agent",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(streaming=True, extended_agent_card=True),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[
                AgentSkill(id="refund", name="refund", description="refunds", tags=["money"]),
                AgentSkill(id="lookup", name="lookup", description="looks up", tags=["read"]),
            ],
        )
        extended = AgentCard()
        extended.CopyFrom(card)
        extended.skills.append(AgentSkill(id="audit", name="audit", description="extended only"))
        handler = DefaultRequestHandler(
            agent_executor=_Executor(asyncio.Event()),
            task_store=InMemoryTaskStore(),
            agent_card=card,
            extended_agent_card=extended,
        )
        routes = [
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True),
        ]
        app = _Recorder(Starlette(routes=routes), self.seen)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(1000):
            if self._server.started:
                break
            self._thread.join(0.01)
        assert self._server.started, "the peer did not start"

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(10)
