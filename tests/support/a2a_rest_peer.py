"""A real A2A peer that serves ONLY the HTTP+JSON (REST) binding: the official a2a-sdk 1.3.0
server's own REST route factory (``create_rest_routes``) and card routes under uvicorn on
loopback, in a thread; its card offers one ``HTTP+JSON`` interface. Behaviour by the first
word of the message text is the JSON-RPC test peer's (tests/support/a2a_peer.py ``_Executor``:
echo, leak, stream, split, task, big, hang, drip). Every request (verb, raw path, query,
headers, JSON body) is kept in :attr:`RestPeer.seen`.
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
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_rest_routes
from a2a.server.tasks import InMemoryPushNotificationConfigStore, InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette

from tests.support.a2a_peer import _Executor

__all__ = ["RestPeer", "RestSeen"]


@dataclass
class RestSeen:
    verb: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: Any = None
    raw: bytes = b""


@dataclass
class _Recorder:
    """ASGI middleware keeping every HTTP request the peer receives."""

    app: Any
    seen: list[RestSeen] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages, chunks, more = [], [], True
        while more:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        entry = RestSeen(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            raw=raw,
        )
        with contextlib.suppress(ValueError):
            entry.body = json.loads(raw) if raw else None
        if not scope["path"].endswith("agent-card.json"):
            self.seen.append(entry)

        async def replay() -> Any:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


class RestPeer:
    """The REST-only peer, serving on a free loopback port until :meth:`stop`."""

    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        logging.getLogger("a2a").setLevel(logging.CRITICAL)  # the peer's log, not the sidecar's
        card = AgentCard(
            name="ledger",
            description="a test ledger agent speaking HTTP+JSON only",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="HTTP+JSON", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(
                streaming=True, push_notifications=True, extended_agent_card=True
            ),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[
                AgentSkill(id="refund", name="refund", description="refunds", tags=["money"]),
                AgentSkill(id="lookup", name="lookup", description="looks up", tags=["read"]),
            ],
        )
        handler = DefaultRequestHandler(
            agent_executor=_Executor(asyncio.Event()),
            task_store=InMemoryTaskStore(),
            agent_card=card,
            push_config_store=InMemoryPushNotificationConfigStore(),
            extended_agent_card=card,
        )
        routes = [*create_agent_card_routes(card), *create_rest_routes(handler)]
        self._recorder = _Recorder(Starlette(routes=routes))
        self.seen = self._recorder.seen
        config = uvicorn.Config(
            self._recorder, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(1000):
            if self._server.started:
                break
            self._thread.join(0.01)
        assert self._server.started, "the REST peer did not start"

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(10)
