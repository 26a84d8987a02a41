"""The path of one call: attest, classify, decide, enforce, relay, record.

One guarded path (sidecar/calls/guarded.py) runs every call: its deadline, attestation,
decision, approvals (step_up.py) and exactly one audit record. Each kind of call is its own
module that supplies its action and its relay: tools.py (CallTool, Check), models.py
(CallModel, StreamModel, the front door), mcp.py (MCP tools/call, prompts/get,
resources/read and the list phase), tasks.py (StartTask, EndTask), asserted.py
(AuthZEN evaluations). Reading one kind
of call means reading one file; :class:`Mediator` puts them together for the transports.
"""

from __future__ import annotations

from sidecar.calls.asserted import AssertedCalls
from sidecar.calls.common import CallResult, TaskResult, ToolCall
from sidecar.calls.decide import Deciding
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.mcp import McpCalls
from sidecar.calls.models import ModelCalls
from sidecar.calls.step_up import StepUp
from sidecar.calls.tasks import TaskCalls
from sidecar.calls.tools import ToolCalls

__all__ = ["CallResult", "Mediator", "TaskResult", "ToolCall"]


class Mediator(
    ToolCalls, ModelCalls, McpCalls, TaskCalls, AssertedCalls, StepUp, Deciding, GuardedPath
):
    """Runs the path of one call for every RPC of the agent API (and AuthZEN evaluations)."""
