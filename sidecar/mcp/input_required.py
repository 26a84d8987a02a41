"""A step-up answered the 2026-07-28 way: an ``input_required`` result whose URL-mode
elicitation sends the person at the client to that approval's page in the approvals console,
and a sealed ``requestState`` the client echoes when it retries the same request.

Only for a client that declared URL-mode elicitation (MCP forbids sending a mode the client
did not declare) and a sidecar with ``approvals.console_url`` (no page, nothing to open):
otherwise the step-up stays the -32011 error with the approval id, as on the handshake era.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "APPROVAL_META_KEY",
    "INPUT_KEY",
    "SIDECAR_META_PREFIX",
    "declined",
    "input_required",
    "strip_sidecar_meta",
    "supports_url_elicitation",
]

# The sidecar's own _meta namespace: only the sidecar writes keys under it.
SIDECAR_META_PREFIX = "agent-sidecar.io/"

# The approval in the result's _meta (the sidecar's namespace, as its other _meta keys).
APPROVAL_META_KEY = "agent-sidecar.io/approval"
# The key of the one input request (and of the client's response to it).
INPUT_KEY = "approval"
_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"


def strip_sidecar_meta(value: Any, *, copy: bool = False) -> Any:
    """``value`` (an upstream's result or definition) without any ``agent-sidecar.io/`` key
    (any case) in any ``_meta`` at any depth: an upstream cannot plant an approval, a
    decision id or a link the agent would take for the sidecar's. In place, or on a copy of
    the JSON (``copy``: a catalog entry stays as its pin hashed it). Iterative: a deeply
    nested answer cannot exhaust the stack."""
    if copy:
        value = json.loads(json.dumps(value))
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("_meta")
            if isinstance(meta, dict):
                for key in [k for k in meta if str(k).lower().startswith(SIDECAR_META_PREFIX)]:
                    del meta[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def supports_url_elicitation(params: dict[str, Any]) -> bool:
    """Whether this request's client declared URL-mode elicitation (2026-07-28 carries the
    capabilities on every request, in ``_meta``)."""
    meta = params.get("_meta")
    capabilities = meta.get(_CAPABILITIES_KEY) if isinstance(meta, dict) else None
    elicitation = capabilities.get("elicitation") if isinstance(capabilities, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def declined(responses: dict[str, Any] | None) -> bool:
    """The person at the client declined (or dismissed) opening the approval page: the
    sidecar then stops asking and answers with the approval id, as on the handshake era."""
    answer = (responses or {}).get(INPUT_KEY)
    return isinstance(answer, dict) and answer.get("action") in ("decline", "cancel")


def input_required(
    name: str,
    approval_id: str,
    url: str,
    reasons: list[str],
    state: str,
    *,
    ask: bool,
) -> dict[str, Any]:
    """The result: the elicitation when ``ask`` (the first answer for this approval; a retry
    that already showed the page gets only the state, so the client retries without asking
    the person again), the state, and the approval in ``_meta``."""
    approval: dict[str, Any] = {"id": approval_id, "state": "pending", "url": url}
    if reasons:
        approval["reasons"] = reasons
    result: dict[str, Any] = {
        "resultType": "input_required",
        "requestState": state,
        "_meta": {APPROVAL_META_KEY: approval},
    }
    if ask:
        why = "; ".join(reasons) or "policy asks for a person's approval"
        message = (
            f"{name} needs approval before it runs ({why}). Open the approval page to review "
            f"approval {approval_id}; the call goes ahead once it is approved."
        )
        params = {"mode": "url", "message": message, "url": url}
        result["inputRequests"] = {INPUT_KEY: {"method": "elicitation/create", "params": params}}
    return result
