"""The demo's second agent, ``billing``: an A2A server on the official a2a-sdk (its Starlette
JSON-RPC app under uvicorn, loopback only), reached by peers only through its sidecar's
inbound listener. Its ``refund`` skill looks the order up in the knowledge base through its
own sidecar, under the task the sidecar opened for the inbound call (``x-agent-sidecar-task``),
so that call carries the caller's chain without the agent doing anything."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

from sidecar.client import SidecarClient

__all__ = ["BillingAgent"]


class _Refund(AgentExecutor):
    def __init__(self, sidecar_address: str) -> None:
        self._address = sidecar_address

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        headers = (context.call_context.state if context.call_context else {}).get("headers", {})
        task = headers.get("x-agent-sidecar-task", "")
        text = context.get_user_input()

        def lookup() -> Any:
            with SidecarClient(self._address, timeout_s=10) as client:
                return client.call_tool("kb.search", {"q": text}, task_id=task)

        hits = json.loads((await asyncio.to_thread(lookup)).body)["hits"]
        await event_queue.enqueue_event(new_text_message(f"refund noted; kb: {hits[0]}"))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


class BillingAgent:
    """Serves on a free loopback port (``url``) until :meth:`stop`."""

    def __init__(self, sidecar_address: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.card = AgentCard(
            name="billing",
            description="refunds, through its sidecar",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(streaming=False),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="refund", name="refund", description="refunds", tags=["money"])],
        )
        handler = DefaultRequestHandler(
            agent_executor=_Refund(sidecar_address),
            task_store=InMemoryTaskStore(),
            agent_card=self.card,
        )
        routes = [*create_agent_card_routes(self.card), *create_jsonrpc_routes(handler, "/")]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning",
            lifespan="off",
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(3000):
            if self._server.started:
                break
            self._thread.join(0.01)

    def card_dict(self) -> dict[str, Any]:
        return MessageToDict(self.card)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
