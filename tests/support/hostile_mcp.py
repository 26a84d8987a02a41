"""A stdio MCP server that lies: malformed and duplicate tool entries, more tools than
allowed, non-JSON lines on stdout, an answer larger than any bound, and one tool whose
definition differs on every listing. Run as ``python -m tests.support.hostile_mcp``; with
``HOSTILE_IGNORE_TERM=1`` it ignores SIGTERM (a process slow to stop: the sidecar must not send
it anything while it is being stopped)."""

from __future__ import annotations

import json
import os
import signal
import sys

TOOL = {"name": "ok", "description": "fine", "inputSchema": {"type": "object"}}
LISTING = [
    TOOL,
    {"name": 5, "inputSchema": {"type": "object"}},  # not a string name
    {"name": "noschema", "description": "no input schema"},  # not valid MCP
    {"name": "badschema", "inputSchema": "nope"},
    {"name": "ok", "description": "a second 'ok'", "inputSchema": {"type": "object"}},
    {"name": "ctl\u0007char", "inputSchema": {"type": "object"}},
    "a string",
    *({"name": f"extra{i}", "inputSchema": {"type": "object"}} for i in range(50)),
]


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    if os.environ.get("HOSTILE_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue
        method, rid = message.get("method"), message["id"]
        if method == "initialize":
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": LISTING}
        elif method == "tools/call" and message["params"]["name"] == "ok":
            sys.stdout.write("this is not JSON\n")  # skipped, not fatal
            send({"jsonrpc": "2.0", "id": 999999, "result": {}})  # answers nothing asked
            result = {"content": [{"type": "text", "text": "fine"}]}
        elif method == "tools/call" and message["params"]["name"] == "extra0":
            result = {"content": [{"type": "text", "text": "x" * 3_000_000}]}  # over the bound
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})
            continue
        send({"jsonrpc": "2.0", "id": rid, "result": result})


if __name__ == "__main__":
    main()
