"""``agent-sidecar explain --as SPIFFE_ID [--user TOKEN]``: what this agent may use, decided
locally from ``--config`` (its policy and catalog), the first thing to run after editing Rego.

Local on purpose: no running sidecar, no listener, no credentials of one are needed, and the
policy on disk is the one decided with. MCP tools are those pinned in the configured state
store (read only; a store that does not exist yet has none). ``--user`` is verified as
``serve`` verifies a user token (the configured issuers, their keys fetched); the token is
never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from sidecar.errors import SidecarError

if TYPE_CHECKING:
    from sidecar.config import Settings
    from sidecar.users.user import User

__all__ = ["explain"]

_FROM_STDIN = "-"
# The attestation a call through this sidecar gets, by identity mode.
_ATTESTATION = {"pod": "pod-svid", "jwt": "jwt-svid", "mtls": "x509-svid", "static": "static"}


def explain(args: argparse.Namespace) -> int:
    from sidecar.authzen.catalog import Catalog
    from sidecar.authzen.explain import explain as decide_all
    from sidecar.authzen.explain import table
    from sidecar.components import build_engine
    from sidecar.config import load_settings
    from sidecar.identity.subject import Subject
    from sidecar.policy import TaskInfo

    settings = load_settings(args.config)
    attestation = args.attestation or _ATTESTATION[settings.identity.mode]
    subject = Subject(spiffe_id=_spiffe_id(args.as_id), attestation=attestation)
    user = _user(settings, args.user) if args.user is not None else None
    catalog = Catalog(settings, _pins(settings))
    task = None
    if args.task is not None:
        task = TaskInfo(id="t-explain", intent=args.task, calls=0, tokens=0, age_s=0.0)
    engine = build_engine(settings)
    try:
        rows = decide_all(engine, catalog, subject, user, task)
        revision = engine.revision
    finally:
        engine.close()
    if args.json:
        doc = {
            "subject": subject.spiffe_id,
            "attestation": attestation,
            "user": user.sub if user is not None else None,
            "task": args.task,
            "policy_revision": revision,
            "rows": [row.to_dict() for row in rows],
        }
        print(json.dumps(doc, indent=2))
        return 0
    who = f" for user {user.sub} ({user.issuer})" if user is not None else ""
    print(f"{subject.spiffe_id} ({attestation}){who}, policy {revision}")
    under = f"under a fresh task ({args.task!r})" if task is not None else "no task"
    print(f"each as a first call: no arguments, {under}, no delegation, no approval\n")
    print(table(rows))
    return 0


def _spiffe_id(value: str) -> str:
    from sidecar.identity.subject import parse_spiffe_id

    return parse_spiffe_id(value)[0]  # InvalidSpiffeIdError is a SidecarError: exit 2


def _user(settings: Settings, token: str) -> User:
    """The verified user of ``token`` (``-``: read from stdin, kept out of the process list)."""
    from sidecar.users.errors import UserTokenError
    from sidecar.users.verify import UserVerifier

    if token == _FROM_STDIN:
        token = sys.stdin.readline().strip()
    verifier = UserVerifier(settings.users)
    if not verifier.enabled:
        raise SidecarError("--user: no user token issuer is configured (users.issuers)")

    async def verify() -> User:
        try:
            return await verifier.verify(token)
        finally:
            await verifier.aclose()

    try:
        return asyncio.run(verify())
    except UserTokenError as exc:  # its message never quotes the token
        raise SidecarError(f"--user: the token does not verify ({exc.code}): {exc}") from exc


def _pins(settings: Settings) -> dict[str, str]:
    """The MCP servers' pinned tools (``SERVER.tool`` -> hash), read from the state store."""
    from sidecar.mcp.pins import PinStore
    from sidecar.state import StateError, open_state

    if not settings.mcp_servers:
        return {}
    state_settings = settings.state
    if state_settings.backend == "sqlite" and not (state_settings.dir / "state.db").is_file():
        return {}  # the sidecar has not run yet: nothing is pinned
    try:
        db = open_state(state_settings)
        try:
            return {name: pin.hash for name, pin in PinStore(db).all().items()}
        finally:
            db.close()
    except StateError as exc:
        raise SidecarError(f"cannot read the MCP pins from the state store: {exc}") from exc
