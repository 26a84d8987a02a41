"""A streamed gRPC call in flight when the sidecar stops still gets its one audit record.

gRPC's ``server.stop`` cancels a streaming handler without waiting for what its ``finally``
awaits; with the bounded hand-off (sidecar/stream_bridge.py) a slow reader leaves the relay
blocked, so the call used to write its record after ``Sidecar.stop`` had closed the audit log
("audit write failed", no record). Now the sidecar drains its streamed calls first. Found by the
review of the gRPC CallPeer/StreamPeer door."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import grpc
import httpx
from aiohttp import web

from sidecar._proto.agentsidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import SIDECAR_AUDIENCE, audit_lines
from tests.integration.test_a2a_grpc import AGENT, PEER, POLICY, _message
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy
from tests.support.settle import settled

EVENTS = 120
PIECE = "y" * (512 * 1024)  # 60 MB in all: more than every buffer between the peer and the agent


class FloodPeer:
    """A peer serving the test peer's card that answers a streamed send with a fast flood of
    large status events, counting what it managed to write."""

    def __init__(self, card: dict) -> None:
        self.card, self.written, self._started = card, 0, threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._started.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/.well-known/agent-card.json", self._card)
        app.router.add_post("/", self._post)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self._started.set()
        self._loop.run_forever()

    async def _card(self, request: web.Request) -> web.Response:
        return web.json_response(self.card)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        rpc_id = (await request.json())["id"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(EVENTS):
            status = {
                "state": "TASK_STATE_WORKING",
                "message": {"role": "ROLE_AGENT", "messageId": f"m{i}", "parts": [{"text": PIECE}]},
            }
            event = {
                "jsonrpc": "2.0",
                "id": rpc_id,
                "result": {"statusUpdate": {"taskId": "t", "contextId": "c", "status": status}},
            }
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.written += 1
        return response

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)


def test_review_s9_streams_a_stream_peer_in_flight_at_stop_keeps_its_audit_record(
    start_jwt_sidecar, authority, tmp_path, caplog
):
    agent = PeerAgent()
    try:
        card = httpx.get(agent.url + "/.well-known/agent-card.json").json()
    finally:
        agent.stop()
    peer = FloodPeer(card)
    try:
        running = start_jwt_sidecar(
            policy={"dir": str(write_policy(tmp_path / "policy", POLICY))},
            a2a={"listen": "127.0.0.1:0"},
            a2a_peers={
                "billing": PEER["billing"]
                | {"url": peer.url, "max_response_bytes": 1 << 20, "timeout_s": 60}
            },
        )
        token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
        channel = grpc.insecure_channel(
            running.address, options=[("grpc.max_receive_message_length", 8 << 20)]
        )
        request = sidecar_pb2.CallPeerRequest(
            peer="billing",
            operation="SendStreamingMessage",
            params_json=json.dumps(_message("go", "lookup")),
        )
        stream = sidecar_pb2_grpc.SidecarStub(channel).StreamPeer(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=120
        )
        next(stream), next(stream)  # the agent reads two events, then stops reading
        assert settled(lambda: peer.written) < EVENTS  # the relay is held back, in flight
        running.stop()  # the sidecar stops under it (Sidecar.stop, as on SIGTERM)
        records = audit_lines(Path(running.audit_path))
        assert [(r["rpc"], r["outcome"]["code"]) for r in records] == [
            ("A2A SendStreamingMessage", "cancelled")
        ]
        assert not [m for m in caplog.messages if "audit write failed" in m]
        channel.close()
    finally:
        peer.stop()
