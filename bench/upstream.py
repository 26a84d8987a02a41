"""A fast upstream for the benchmarks (aiohttp, one process): a tool API and an
OpenAI-compatible chat endpoint, unary and streamed, so the sidecar is what is measured.

    python bench/upstream.py --port PORT
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

TICKET = json.dumps({"id": "7", "title": "printer on fire", "state": "open"}).encode()
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
WORDS = ["The", " printer", " is", " on", " fire", "."]


async def ticket(request: web.Request) -> web.Response:
    return web.Response(body=TICKET, content_type="application/json")


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, word in enumerate(WORDS):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": word},
                    "finish_reason": "stop" if i == len(WORDS) - 1 else None,
                }
            ],
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/tickets/{id}", ticket)
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
