"""``agent-sidecar mcp``: review MCP tool definitions and accept changed ones (``--json``:
the same as JSON, for scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sidecar.cli.approvals import admin_client
from sidecar.errors import SidecarError

__all__ = ["mcp"]


def _doc(d: Any) -> dict[str, Any]:
    """One definition as JSON: its hashes and pin, and the definition itself (parsed)."""
    return {
        "name": d.name,
        "hash": d.hash,
        "pinned_hash": d.pinned_hash,
        "changed": d.changed,
        "pinned_by": d.pinned_by,
        "pinned_at_ns": d.pinned_at_ns,
        "definition": json.loads(d.definition_json) if d.definition_json else None,
    }


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def mcp(args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    with admin_client(args) as client:
        try:
            if args.mcp_command == "list":
                found = client.mcp_definitions(changed_only=args.changed)
                if as_json:
                    _print_json([_doc(d) for d in found])
                for d in [] if as_json else found:
                    state = "CHANGED" if d.changed else "pinned"
                    print(f"{d.name}  {state:<8} {d.hash}  (pinned {d.pinned_hash or '-'})")
            elif args.mcp_command == "show":
                found = [d for d in client.mcp_definitions() if d.name == args.name]
                if not found:
                    raise SidecarError(f"no MCP tool {args.name!r} is listed now")
                d = found[0]
                if as_json:
                    _print_json(_doc(d))
                else:
                    print(f"name:        {d.name}\nhash:        {d.hash}")
                    print(f"pinned_hash: {d.pinned_hash}\nchanged:     {str(d.changed).lower()}")
                    print(json.dumps(json.loads(d.definition_json), indent=2))
            else:
                d = client.mcp_accept(args.name, hash=args.hash, reason=args.reason)
                if as_json:
                    _print_json(_doc(d))
                else:
                    print(f"{d.name} pinned to {d.pinned_hash} by {d.pinned_by}")
        except SidecarError as exc:
            if as_json:
                _print_json({"error": str(exc)})
            print(f"agent-sidecar: {exc}", file=sys.stderr)
            return 1
    return 0
