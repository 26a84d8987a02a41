"""``agent-sidecar mcp``: review MCP tool definitions and accept changed ones."""

from __future__ import annotations

import argparse
import json
import sys

from sidecar.cli.approvals import admin_client
from sidecar.errors import SidecarError

__all__ = ["mcp"]


def mcp(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        try:
            if args.mcp_command == "list":
                for d in client.mcp_definitions(changed_only=args.changed):
                    state = "CHANGED" if d.changed else "pinned"
                    print(f"{d.name}  {state:<8} {d.hash}  (pinned {d.pinned_hash or '-'})")
            elif args.mcp_command == "show":
                found = [d for d in client.mcp_definitions() if d.name == args.name]
                if not found:
                    raise SidecarError(f"no MCP tool {args.name!r} is listed now")
                d = found[0]
                print(f"name:        {d.name}\nhash:        {d.hash}")
                print(f"pinned_hash: {d.pinned_hash}\nchanged:     {str(d.changed).lower()}")
                print(json.dumps(json.loads(d.definition_json), indent=2))
            else:
                d = client.mcp_accept(args.name, hash=args.hash, reason=args.reason)
                print(f"{d.name} pinned to {d.pinned_hash} by {d.pinned_by}")
        except SidecarError as exc:
            print(f"agent-sidecar: {exc}", file=sys.stderr)
            return 1
    return 0
