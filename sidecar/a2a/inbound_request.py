"""What the inbound listener reads from a caller's request besides what protocol.py parses,
and the request as the agent receives it (docs/a2a.md "Inbound").

``referenceTaskIds`` (parsed and bounded by protocol.py): an SDK agent built with
``should_populate_referred_tasks`` loads each referenced task and hands it to its executor,
so each must be the caller's own, like the task and context a message names. The
push-notification URL is a fact for policy (the agent will POST task updates there, from
inside the pod). Under a ``redact`` obligation the
agent receives the params and the JSON-RPC ``id`` redacted, re-encoded, and the audit record
describes those (the caller's answer still comes back under its own id: inbound_answer.py).
"""

from __future__ import annotations

from typing import Any

from sidecar.a2a import protocol
from sidecar.a2a.provenance import intent_of
from sidecar.a2a.push_url import parse_push_url
from sidecar.a2a.redact import redact_parts
from sidecar.classify import redact

__all__ = [
    "arguments_of",
    "push_fact",
    "sent_id",
    "sent_request",
]


def push_fact(push_url: str) -> dict[str, str | int] | None:
    """``{scheme, host, port}`` of the push-notification URL a request names (None: none):
    the host lower-case (an IPv6 literal without brackets), the effective port. protocol.py
    refused any URL sidecar/a2a/push_url.py cannot read unambiguously; userinfo never gets
    here."""
    if not push_url:
        return None
    return parse_push_url(push_url).to_input()


def arguments_of(parsed: protocol.A2aRequest, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``input.action.arguments``: the request described, never its content."""
    texts = protocol.part_texts(parts)
    metadata = (parsed.message or {}).get("metadata")
    arguments: dict[str, Any] = {
        "parts": {
            "count": len(parts),
            "kinds": sorted({protocol.part_kind(p) for p in parts}),
            "chars": sum(len(t) for t in texts),
        },
        "task_id": parsed.task_id,
        "context_id": parsed.context_id,
        "metadata_keys": sorted(metadata) if isinstance(metadata, dict) else [],
    }
    if parsed.references:
        arguments["reference_task_ids"] = len(parsed.references)
    if push := push_fact(parsed.push_url):
        arguments["push_url"] = push
    return arguments


def sent_id(parsed: protocol.A2aRequest, classes: tuple[str, ...]) -> Any:
    """The JSON-RPC ``id`` the agent receives: the caller's, ``classes`` redacted (a caller
    may write a secret there as anywhere else)."""
    return redact(parsed.id, classes) if classes else parsed.id


def sent_request(
    parsed: protocol.A2aRequest, body: bytes, classes: tuple[str, ...]
) -> tuple[bytes, dict[str, Any] | None, str]:
    """The request the agent receives under ``redact``: its params redacted and re-encoded,
    the arguments describing them and the task's intent from the redacted text (None and ""
    when ``classes`` is empty: ``body`` passes unchanged)."""
    if not classes:
        return body, None, ""
    params = redact_parts(parsed.params, classes)
    message = params.get("message")
    parts = message.get("parts") if isinstance(message, dict) else None
    parts = parts if isinstance(parts, list) else []
    doc = {
        "jsonrpc": "2.0",
        "id": sent_id(parsed, classes),
        "method": parsed.method,
        "params": params,
    }
    intent = intent_of(parsed.skill, protocol.part_texts(parts))
    return protocol.dumps(doc), arguments_of(parsed, parts), intent
