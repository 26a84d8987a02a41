"""A hostile A2A peer (run as a subprocess: ``python a2a_drip_peer.py PORT SIZE PIECE``).

It serves a card; any POST is answered with an SSE stream of ONE event of SIZE bytes written
in PIECE-byte writes, each drained: the sidecar reads it in many small reads (review s11
finding 6, tests/integration/test_review_s11_a2a_outbound.py).
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web


def main() -> None:
    port, size, piece = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    url = f"http://127.0.0.1:{port}/"
    card = {
        "name": "billing",
        "description": "drips",
        "version": "1.0.0",
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {"streaming": True},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "lookup", "name": "lookup", "description": "looks up", "tags": []}],
    }

    async def get_card(request: web.Request) -> web.Response:
        return web.json_response(card)

    async def post(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        rpc_id = json.dumps(body["id"])
        head = (
            f'data: {{"jsonrpc":"2.0","id":{rpc_id},"result":{{"message":{{"messageId":"m",'
            '"role":"ROLE_AGENT","parts":[{"text":"'
        ).encode()
        tail = b'"}]}}}\r\n\r\n'
        await response.write(head)
        left = size - len(head) - len(tail)
        while left > 0:
            n = min(piece, left)
            left -= n
            await response.write(b"x" * n)  # drained: one small read at the sidecar
            await asyncio.sleep(0)
        await response.write(tail)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/.well-known/agent-card.json", get_card)
    app.router.add_post("/", post)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
