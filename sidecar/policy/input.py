"""Policy input, version 1: a pure function of facts the sidecar has established.

The shape is the contract in ``docs/policy-contract.md`` and the JSON schema
``rego/schemas/input.v1.json``. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["INPUT_VERSION", "Action", "ApprovalInfo", "TaskInfo", "build_input"]

INPUT_VERSION = 1


class Inputs(Protocol):
    """What the input needs of a caller: ``sidecar.identity.Subject`` (``input.subject``) and
    ``sidecar.users.User`` (``input.user``) are both one. A protocol, not an import: policy sits
    below identity and users in the layers (docs/architecture.md), and the policy tools
    (check, test) load without them."""

    def to_input(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Action:
    """What the caller wants to do."""

    kind: Literal["tool", "model", "mcp", "a2a", "a2a_inbound"]
    name: str
    operation: Literal["read", "act", "delegate"]
    target: str
    arguments: Mapping[str, Any]
    data_classes: Sequence[str] = ()
    # MCP only: "list" (may the agent see it) or "call"; the MCP method; the upstream's
    # annotations (untrusted hints); the tool definition's hash against its pin.
    phase: str = ""
    method: str = ""
    annotations: Mapping[str, Any] | None = None
    definition: Mapping[str, Any] | None = None
    # Models only: the API the call came through (chat, responses, embeddings, messages).
    api: str = ""
    # A2A only: the members beyond the common ones (method, a2a_operation, skill, card),
    # merged into ``input.action`` as they are (docs/policy-contract.md, A2A).
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TaskInfo:
    """The task a call runs under. Counters are present once the sidecar tracks tasks."""

    id: str
    intent: str = ""
    calls: int | None = None
    tokens: int | None = None
    age_s: float | None = None


@dataclass(frozen=True)
class ApprovalInfo:
    """A human approval of this exact request; present only when valid and unused."""

    id: str
    approved_by: str
    approved_at_ns: int
    reason: str = ""


def build_input(
    *,
    request_id: str,
    time_ns: int,
    subject: Inputs,
    action: Action,
    task: TaskInfo | None = None,
    delegation_chain: Sequence[str] = (),
    approval: ApprovalInfo | None = None,
    user: Inputs | None = None,
    delegation_origin: Mapping[str, Any] | None = None,
    inbound: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the input v1 document for one request."""
    doc: dict[str, Any] = {
        "version": INPUT_VERSION,
        "request_id": request_id,
        "time_ns": time_ns,
        "subject": subject.to_input(),
        "action": {
            "kind": action.kind,
            "name": action.name,
            "operation": action.operation,
            "target": action.target,
            "arguments": dict(action.arguments),
            "data_classes": sorted(set(action.data_classes)),
        },
        "delegation": {"chain": list(delegation_chain), "depth": len(delegation_chain)},
    }
    if delegation_origin is not None:  # the call runs under an inbound A2A task
        doc["delegation"]["origin"] = dict(delegation_origin)
    if inbound is not None:  # an inbound A2A call (action.kind a2a_inbound)
        doc["inbound"] = dict(inbound)
    if action.kind == "model" and action.api:
        doc["action"]["api"] = action.api
    if action.kind == "mcp":
        doc["action"]["phase"] = action.phase
        doc["action"]["method"] = action.method
        doc["action"]["annotations"] = dict(action.annotations or {})
        if action.definition is not None:
            doc["action"]["definition"] = dict(action.definition)
    if action.kind in ("a2a", "a2a_inbound") and action.details:
        doc["action"].update(dict(action.details))
    if task is not None:
        task_doc: dict[str, Any] = {"id": task.id, "intent": task.intent}
        for key in ("calls", "tokens", "age_s"):
            value = getattr(task, key)
            if value is not None:
                task_doc[key] = value
        doc["task"] = task_doc
    if user is not None:
        doc["user"] = user.to_input()
    if approval is not None:
        doc["approval"] = {
            "id": approval.id,
            "approved_by": approval.approved_by,
            "approved_at_ns": approval.approved_at_ns,
            "reason": approval.reason,
        }
    return doc
