"""What the inbound listener hands its agent and its callers besides the A2A request itself:
the headers the agent sees, its refusals, and the agent's card (docs/a2a.md "Inbound").

The agent trusts ``x-agent-sidecar-*`` headers because only the sidecar sets them: every
incoming header whose name, lower-cased and with ``_`` read as ``-`` (servers such as
uvicorn/h11 pass ``x_agent_sidecar_caller`` through, and some frameworks fold ``_`` into
``-``), starts with that prefix or names a credential is dropped first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.a2a import protocol
from sidecar.a2a.callers import Caller
from sidecar.a2a.errors import A2aError
from sidecar.a2a.txn_token import TXN_HEADER
from sidecar.a2a_inbound_settings import InboundSettings
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["AGENT_HEADER_PREFIX", "agent_headers", "read_card", "read_whole", "rewrite_card"]

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
        "accept-encoding",  # the agent answers identity (agent_headers)
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
    # The sidecar reads the answer (its task ids) and passes it on as the agent sent it: a
    # compressed one would be unreadable here and reach the caller without its encoding.
    headers["Accept-Encoding"] = "identity"
    headers[AGENT_HEADER_PREFIX + "caller"] = caller.id
    headers[AGENT_HEADER_PREFIX + "caller-via"] = caller.via
    headers[AGENT_HEADER_PREFIX + "caller-kind"] = caller.kind
    if task_id:  # a read operation opens none
        headers[AGENT_HEADER_PREFIX + "task"] = task_id
    headers[AGENT_HEADER_PREFIX + "decision-id"] = decision_id
    headers[AGENT_HEADER_PREFIX + "skill"] = skill
    return headers


async def read_whole(answer: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The agent's whole unary answer, or None past ``limit`` bytes. Read to its end:
    ``content.read(n)`` returns what has arrived so far, and an answer that comes in more than
    one piece (a large one, a chunked one) would be cut short under a Content-Length."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await answer.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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


def trace_of(request: web.BaseRequest) -> tuple[tuple[str, str], ...]:
    """The caller's ``traceparent``, carried into the call's trace."""
    value = request.headers.get("traceparent")
    return (("traceparent", value),) if value else ()


def json_error(
    status: int,
    rpc_id: Any,
    code: str,
    message: str,
    rpc_code: int = protocol.DENIED,
    decision_id: str = "",
) -> web.Response:
    """A refusal as A2A's JSON-RPC binding answers one, with the sidecar's code."""
    body = protocol.rpc_error(rpc_id, rpc_code, message, code, decision_id=decision_id)
    return web.Response(status=status, body=protocol.dumps(body), content_type="application/json")
