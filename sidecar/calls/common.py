"""What the kinds of call share: requests and results, the facts a call established, the
stop that ends it with a stable code, and the helpers around them."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar.audit import payload_view
from sidecar.identity import Subject
from sidecar.model_calls import Usage
from sidecar.policy import Action, Decision
from sidecar.relay import UpstreamResponse
from sidecar.state.offloop import STATE_THREAD, off_loop
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.tasks import Task
from sidecar.users import User

__all__ = [
    "ANSWER_MARGIN_S",
    "NOT_IN_INTENT",
    "STATE_THREAD",
    "CallResult",
    "Decided",
    "Facts",
    "Stop",
    "TaskResult",
    "ToolCall",
    "action_record",
    "answer_margin",
    "off_loop",
    "parse_arguments",
]

log = logging.getLogger("sidecar.pipeline")


# Kept back from the agent's deadline so that a timeout inside the sidecar still reaches the
# agent as a specific answer (policy_timeout, deadline_exceeded) rather than a bare deadline.
ANSWER_MARGIN_S = 0.05


# Left out of intent records (write-ahead): the call's own record carries them, and they are
# the large part (the policy input under log: full).
NOT_IN_INTENT = frozenset({"input", "shadow", "latency_ms"})


def answer_margin(time_remaining: float) -> float:
    """How long before the server's view of the deadline to answer. gRPC sends the timeout
    rounded *up* to three significant digits (15 s arrives as 15.1 s, 120 s as 121 s, 1000 s
    as 1010 s), so the server believes it has up to one unit of the third digit more than the
    client waits: keep that back too, or a long step-up wait ends in a bare DEADLINE_EXCEEDED."""
    if time_remaining <= 0:
        return ANSWER_MARGIN_S
    return ANSWER_MARGIN_S + 10 ** (math.floor(math.log10(time_remaining)) - 2)


@dataclass(frozen=True)
class ToolCall:
    """A CallTool or Check request, decoded."""

    tool: str
    arguments_json: str
    task_id: str = ""
    intent: str = ""
    approval_id: str = ""
    no_wait: bool = False
    delegation_chain: tuple[str, ...] = ()


@dataclass
class TaskResult:
    """How a StartTask or EndTask ends: the task, or why not."""

    decision_id: str
    code: str
    status: grpc.StatusCode
    message: str = ""
    task: Task | None = None


@dataclass
class CallResult:
    """How a call ends. ``status`` OK carries ``upstream`` (CallTool) or just the decision."""

    decision_id: str
    code: str
    status: grpc.StatusCode
    message: str = ""
    decision: Decision | None = None
    policy_revision: str = ""
    upstream: UpstreamResponse | None = None
    upstream_status: int = 0
    upstream_body: bytes = b""
    # The provider's retry hints (Retry-After, retry-after-ms), passed on to the agent.
    upstream_headers: dict[str, str] | None = None
    # The step-up approval to wait for or retry with, and its console page ("" without
    # approvals.console_url): the front door and MCP put it in their error bodies.
    approval_id: str = ""
    approval_url: str = ""
    # Model calls: the completion (unary) and the token usage.
    completion: dict[str, Any] | None = None
    usage: Usage | None = None
    # MCP calls: the upstream's result, or its JSON-RPC error (code, message, data) intact.
    answer: dict[str, Any] | None = None
    rpc_error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Facts:
    """What the sidecar established about a call before asking policy."""

    subject: Subject
    chain: list[str]
    task: Task | None
    task_id: str
    action: Action
    # What an approval is bound to (the full arguments, or messages and parameters).
    arguments: dict[str, Any]
    # The verified end user the agent acts for, if it passed a user token.
    user: User | None = None
    # An inbound A2A call: ``input.inbound`` (sidecar/calls/a2a_inbound.py).
    inbound: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decided:
    decision: Decision
    revision: str
    engine_decision_id: str | None


class Stop(Exception):
    """Ends the pipeline early with a result (internal control flow)."""

    def __init__(self, code: str, message: str, **kwargs: Any) -> None:
        super().__init__(message)
        self.code = code
        self.kwargs = kwargs


def action_record(action: Action, payload: dict[str, Any]) -> dict[str, Any]:
    """The action as audited: arguments (or the prompt) by name only until the decision's
    ``log`` obligation says more may be recorded."""
    return {
        "kind": action.kind,
        "name": action.name,
        "operation": action.operation,
        "target": action.target,
        "data_classes": sorted(set(action.data_classes)),
        "arguments": payload_view(payload, "metadata"),
    }


def parse_arguments(text: str) -> dict[str, Any]:
    """Arguments must be one JSON object, read strictly (``sidecar/strict_json.py``)."""
    try:
        value = loads_strict(text or "{}", "arguments_json")
    except StrictJsonError as exc:
        raise Stop("invalid_arguments", str(exc)) from exc
    if not isinstance(value, dict):
        raise Stop("invalid_arguments", "arguments_json must be a JSON object")
    return value
