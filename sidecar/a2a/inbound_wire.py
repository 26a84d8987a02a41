"""What the inbound listener hands its agent and its callers besides the A2A request itself:
the headers the agent sees, and the agent's card (docs/a2a.md "Inbound").

The agent trusts ``x-agent-sidecar-*`` headers because only the sidecar sets them: every
incoming header whose name, lower-cased and with ``_`` read as ``-`` (servers such as
uvicorn/h11 pass ``x_agent_sidecar_caller`` through, and some frameworks fold ``_`` into
``-``), starts with that prefix or names a credential is dropped first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sidecar.a2a.callers import Caller
from sidecar.a2a.errors import A2aError
from sidecar.a2a.txn_token import TXN_HEADER
from sidecar.a2a_inbound_settings import InboundSettings
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["AGENT_HEADER_PREFIX", "agent_headers", "read_card", "rewrite_card"]

AGENT_HEADER_PREFIX = "x-agent-sidecar-"
# Request headers never passed to the agent: hop-by-hop ones, and the caller's credentials.
_DROPPED = frozenset(
    {
        "authorization",
        TXN_HEADER.lower(),
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "content-length",
    }
)


def _dropped(name: str) -> bool:
    folded = name.lower().replace("_", "-")
    return folded in _DROPPED or folded.startswith(AGENT_HEADER_PREFIX)


def agent_headers(
    incoming: Mapping[str, str], caller: Caller, task_id: str, decision_id: str, skill: str
) -> dict[str, str]:
    """What the agent receives: the caller's headers without credentials, hop-by-hop headers
    or anything claiming to be the sidecar's, then the sidecar's own (``skill``: the one
    policy decided on, which the agent dispatches on)."""
    headers = {name: value for name, value in incoming.items() if not _dropped(name)}
    headers[AGENT_HEADER_PREFIX + "caller"] = caller.id
    headers[AGENT_HEADER_PREFIX + "caller-via"] = caller.via
    headers[AGENT_HEADER_PREFIX + "caller-kind"] = caller.kind
    headers[AGENT_HEADER_PREFIX + "task"] = task_id
    headers[AGENT_HEADER_PREFIX + "decision-id"] = decision_id
    headers[AGENT_HEADER_PREFIX + "skill"] = skill
    return headers


def read_card(settings: InboundSettings) -> dict[str, Any]:
    assert settings.card is not None
    try:
        card = loads_strict(settings.card.read_text(encoding="utf-8"), "a2a_inbound.card")
    except (OSError, StrictJsonError) as exc:
        raise A2aError(f"a2a_inbound.card: {exc}", code="invalid_config") from exc
    if not isinstance(card, dict):
        raise A2aError("a2a_inbound.card: the card is not a JSON object", code="invalid_config")
    return card


def rewrite_card(card: dict[str, Any], base: str) -> dict[str, Any]:
    """The card with every interface URL pointing at the listener (and no stale signature)."""
    out = json.loads(json.dumps(card))
    out.pop("signatures", None)
    for interface in out.get("supportedInterfaces") or []:
        if isinstance(interface, dict):
            interface["url"] = base
    if "url" in out:  # 0.3
        out["url"] = base
    for interface in out.get("additionalInterfaces") or []:
        if isinstance(interface, dict):
            interface["url"] = base
    return out
