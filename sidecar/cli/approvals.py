"""``agent-sidecar approvals``: the approvals admin API from a terminal.

Every approval printed names its console page when the sidecar has ``approvals.console_url``
(``list`` and ``watch``: a last column; ``show``/``--json``: ``url``), so an operator can hand
a link to whoever must decide."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sidecar.errors import SidecarError

__all__ = ["admin_client", "approvals"]


def admin_client(args: argparse.Namespace) -> Any:
    """A client of the admin listener from the command line's address and identity."""
    import getpass

    from sidecar.approvals.client import ApprovalsClient, svid_credentials

    address = args.admin
    if not address and args.config:
        from sidecar.config import load_settings

        address = load_settings(args.config).approvals_listen
    if not address:
        raise SidecarError("give --admin ADDRESS or --config FILE (approvals.listen)")
    tls = None
    if not address.startswith("unix:"):
        tls = svid_credentials(
            cert=args.cert, key=args.key, bundle=args.bundle, workload_api=args.workload_api
        )
    approver = args.approver or (getpass.getuser() if tls is None else "")
    return ApprovalsClient(address, approver=approver, tls=tls, server_name=args.server_name)


def approvals(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    def show(approval: object) -> str:
        return json_format.MessageToJson(approval, preserving_proto_field_name=True, indent=2)

    with admin_client(args) as client:
        command = args.approvals_command
        try:
            if command == "list":
                approvals = client.list(args.state, args.limit)
                if args.json:
                    print(json.dumps([json.loads(show(a)) for a in approvals], indent=2))
                for a in [] if args.json else approvals:
                    reasons = "; ".join(a.reasons)
                    line = f"{a.id}  {a.state:<8} {a.subject}  {a.action_name}  {reasons}"
                    print(f"{line}  {a.url}" if a.url else line)
            elif command == "show":
                print(show(client.get(args.id)))
            elif command in ("approve", "deny"):
                decide = client.approve if command == "approve" else client.deny
                approval = decide(args.id, reason=args.reason)
                if args.json:
                    print(show(approval))
                else:
                    print(f"{approval.id} {approval.state} by {approval.decided_by}")
            else:
                for event in client.watch():
                    a = event.approval
                    line = f"{event.type:<8} {a.id}  {a.subject}  {a.action_name}"
                    print(f"{line}  {a.url}" if a.url else line, flush=True)
        except SidecarError as exc:
            print(f"agent-sidecar: {exc}", file=sys.stderr)
            return 1
    return 0
