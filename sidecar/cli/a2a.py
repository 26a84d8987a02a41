"""``agent-sidecar a2a``: review A2A peer agent cards and accept changed ones (``--json``: the
same as JSON, for scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sidecar.cli.approvals import admin_client
from sidecar.errors import SidecarError

__all__ = ["a2a"]


def _doc(c: Any) -> dict[str, Any]:
    """One peer's card as JSON: its digests, pin and signer, and the card served now."""
    return {
        "peer": c.peer,
        "digest": c.digest,
        "pinned_digest": c.pinned_digest,
        "changed": c.changed,
        "signed": c.signed,
        "signer": c.signer,
        "pinned_by": c.pinned_by,
        "pinned_at_ns": c.pinned_at_ns,
        "skills": list(c.skills),
        "card": json.loads(c.card_json) if c.card_json else None,
        "error": c.error,
        "error_message": c.error_message,
    }


def _line(c: Any) -> str:
    if c.error:
        return f"{c.peer}  ERROR    {c.error}: {c.error_message}"
    state = "CHANGED" if c.changed else "pinned"
    signed = f"signed by {c.signer}" if c.signed else "unsigned"
    return f"{c.peer}  {state:<8} {c.digest}  (pinned {c.pinned_digest or '-'}; {signed})"


def a2a(args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    with admin_client(args) as client:
        try:
            if args.a2a_command == "list":
                found = client.a2a_cards(changed_only=args.changed)
                if as_json:
                    print(json.dumps([_doc(c) for c in found], indent=2, sort_keys=True))
                for c in [] if as_json else found:
                    print(_line(c))
            elif args.a2a_command == "show":
                found = [c for c in client.a2a_cards() if c.peer == args.peer]
                if not found:
                    raise SidecarError(f"no A2A peer {args.peer!r} is configured")
                c = found[0]
                if as_json:
                    print(json.dumps(_doc(c), indent=2, sort_keys=True))
                else:
                    print(_line(c))
                    print(f"skills (pinned): {', '.join(c.skills) or '-'}")
                    if c.card_json:
                        print(json.dumps(json.loads(c.card_json), indent=2, sort_keys=True))
            else:
                c = client.a2a_accept(args.peer, digest=args.digest, reason=args.reason)
                if as_json:
                    print(json.dumps(_doc(c), indent=2, sort_keys=True))
                else:
                    print(f"{c.peer} pinned to {c.pinned_digest} by {c.pinned_by}")
        except SidecarError as exc:
            if as_json:
                print(json.dumps({"error": str(exc)}))
            print(f"agent-sidecar: {exc}", file=sys.stderr)
            return 1
    return 0
