"""One parsed A2A request as the guarded call reads it (sidecar/calls/a2a.py ``A2aCall``).

Shared by both of the agent's doors, the loopback endpoint (outbound.py) and the gRPC API's
CallPeer/StreamPeer (grpc_calls.py), so that the same request gives policy the same input
whichever door it came through: the operation, the parts' summary, the data classes and the
push URL are read here and nowhere else. Each door adds only its own transport facts (the
sidecar task, intent, approval, how long to wait for an approver).
"""

from __future__ import annotations

from sidecar.a2a import protocol
from sidecar.a2a.push_url import parse_push_url
from sidecar.a2a.redact import classify_params
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.calls.a2a import A2aCall

__all__ = ["agent_call"]


def agent_call(
    parsed: protocol.A2aRequest,
    peer: A2aPeerSettings,
    *,
    task_id: str,
    intent: str,
    approval_id: str,
    no_wait: bool | str,
    time_remaining: float | None,
    delegation_chain: tuple[str, ...] = (),
) -> A2aCall:
    """The call for ``parsed`` to ``peer``: ``operation`` is ``read`` for the read-only
    A2A operations, else the skill's configured operation."""
    operation = "read" if parsed.read_only else peer.operation_of(parsed.skill)
    metadata = (parsed.message or {}).get("metadata")
    push_url = parse_push_url(parsed.push_url).to_input() if parsed.push_url else None
    return A2aCall(
        rpc_id=parsed.id,
        method=parsed.method,
        a2a_operation=parsed.operation,
        version=parsed.version,
        skill=parsed.skill,
        operation=operation,
        params=parsed.params,
        parts=parsed.parts,
        texts=protocol.part_texts(parsed.parts),
        part_kinds=[protocol.part_kind(p) for p in parsed.parts],
        a2a_task_id=parsed.task_id,
        references=parsed.references,
        context_id=parsed.context_id,
        metadata_keys=sorted(metadata) if isinstance(metadata, dict) else [],
        data_classes=classify_params(parsed.params, rpc_id=parsed.id),
        push_url=push_url,
        streaming=parsed.streaming,
        task_id=task_id,
        intent=intent,
        approval_id=approval_id,
        no_wait=no_wait,
        time_remaining=time_remaining,
        delegation_chain=delegation_chain,
    )
