"""The soak's tool and model upstream (aiohttp, one process): bench/upstream.py's ticket and
OpenAI-compatible chat endpoints (unary and streamed), plus the routes the soak's mix calls
under a task (``kb.search``, ``payments.refund``), so every call the mix makes is relayed.

    python bench/soak_upstream.py --port PORT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.upstream import completions, ticket

HITS = json.dumps({"hits": [{"id": "kb-1", "title": "printer safety"}]}).encode()


async def kb_search(request: web.Request) -> web.Response:
    return web.Response(body=HITS, content_type="application/json")


async def refund(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"refund": "accepted", "bytes": len(body)}, status=201)


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/tickets/{id}", ticket)
    application.router.add_get("/kb/search", kb_search)
    application.router.add_post("/refunds", refund)
    application.router.add_post("/v1/chat/completions", completions)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
