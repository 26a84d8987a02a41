"""A real a2a-sdk agent server (Starlette + uvicorn, unmodified SDK) for the inbound listener's
tests: it answers each message with the ``x-agent-sidecar-*`` headers it received (what the
agent trusts; ``_`` read as ``-``, as some frameworks do), streams when asked, hangs on "hang"
until the test ends, and answers a message starting "task " with a completed task (whose
artifact names the caller it was made for)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

__all__ = ["InboundAgent", "card_dict"]


def agent_card(url: str) -> AgentCard:
    return AgentCard(
        name="billing",
        description="refunds and lookups",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        skills=[
            AgentSkill(id="refund", name="refund", description="refund", tags=["billing"]),
            AgentSkill(id="lookup", name="lookup", description="lookup", tags=["billing"]),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text"],
        default_output_modes=["text"],
    )


def card_dict(url: str) -> dict[str, Any]:
    return MessageToDict(agent_card(url))


class _Executor(AgentExecutor):
    def __init__(self, seen: list[dict[str, str]], release: threading.Event) -> None:
        self._seen = seen
        self._release = release

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        headers = context.call_context.state.get("headers", {})
        mine = {
            k: v
            for k, v in headers.items()
            if k.lower().replace("_", "-").startswith(("x-agent-sidecar-", "txn-token"))
        }
        mine["authorization"] = headers.get("authorization", "")
        mine["txn-token"] = headers.get("txn-token", "")
        self._seen.append(mine)
        text = context.get_user_input()
        if text.startswith("task "):
            task = context.current_task or new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
            updater = TaskUpdater(event_queue, task.id, task.context_id)
            caller = headers.get("x-agent-sidecar-caller", "")
            await updater.add_artifact([new_text_part(f"{text[5:]} for {caller}")])
            await updater.complete()
            return
        if text == "hang":
            while not self._release.is_set():
                await asyncio.sleep(0.05)
        await event_queue.enqueue_event(
            new_text_message(json.dumps(mine), context_id=context.context_id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


class InboundAgent:
    """The agent's own A2A server on loopback, in a thread."""

    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.seen: list[dict[str, str]] = []
        self.release = threading.Event()
        handler = DefaultRequestHandler(
            agent_executor=_Executor(self.seen, self.release),
            task_store=InMemoryTaskStore(),
            agent_card=agent_card(self.url),
        )
        app = Starlette(routes=create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True))
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._sock = sock
        self._thread = threading.Thread(
            target=lambda: self._server.run(sockets=[sock]), daemon=True
        )

    def __enter__(self) -> InboundAgent:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                break
            threading.Event().wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
