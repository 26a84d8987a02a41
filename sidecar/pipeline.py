"""The path of one call, built once: attest, classify, decide, enforce, relay, record.

:func:`build_calls` makes the collaborators (establisher, decider, step-up, relay gate), the
one :class:`~sidecar.calls.guarded.GuardedPath` from them, and the adapters that receive it:
tools.py (CallTool, Check), models.py (CallModel, StreamModel, the front door), tasks.py
(StartTask, EndTask), asserted.py (AuthZEN evaluations). The MCP adapter
(sidecar/mcp/calls.py) is made by the MCP gateway from the same path, gate and decider, only
when MCP is configured. Each transport is handed the adapters it serves (sidecar/app.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sidecar.approvals import ApprovalBroker
from sidecar.audit import AuditSink
from sidecar.budgets import Budgets
from sidecar.calls.asserted import AssertedCalls
from sidecar.calls.common import CallResult, TaskResult, ToolCall
from sidecar.calls.decide import Decider
from sidecar.calls.establish import Establisher
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.models import ModelCalls
from sidecar.calls.relaying import RelayGate
from sidecar.calls.step_up import StepUp
from sidecar.calls.tasks import TaskCalls
from sidecar.calls.tools import ToolCalls
from sidecar.config import Settings
from sidecar.identity import Attestor, UpstreamCredentials, WorkloadIdentity
from sidecar.policy import PolicyEngine
from sidecar.relay import HttpRelay
from sidecar.relay.models import ModelRelay
from sidecar.tasks import TaskRegistry
from sidecar.tracing import Tracer
from sidecar.users import TokenExchanger, UserVerifier

__all__ = ["CallResult", "Calls", "TaskResult", "ToolCall", "build_calls"]


@dataclass(frozen=True)
class Calls:
    """The guarded path, the collaborators adapters may also receive, and the adapters."""

    path: GuardedPath
    decider: Decider
    gate: RelayGate
    establisher: Establisher
    tools: ToolCalls
    models: ModelCalls
    tasks: TaskCalls
    asserted: AssertedCalls

    async def aclose(self) -> None:
        """Close the sessions to user token issuers and authorization servers."""
        await self.establisher.aclose()
        await self.gate.aclose()


def build_calls(
    *,
    settings: Settings,
    engine: PolicyEngine,
    attestor: Attestor,
    relay: HttpRelay,
    audit: AuditSink,
    tasks: TaskRegistry,
    approvals: ApprovalBroker,
    budgets: Budgets,
    models: ModelRelay,
    credentials: UpstreamCredentials | None = None,
    shadow: PolicyEngine | None = None,
    identity: WorkloadIdentity | None = None,
    users: UserVerifier | None = None,
    exchanger: TokenExchanger | None = None,
) -> Calls:
    """Every object of the call path, each built once from what it needs."""
    tracer = Tracer()
    stats: Counter[str] = Counter()  # for operators (exported by sidecar.metrics)
    establisher = Establisher(
        attestor=attestor,
        users=users or UserVerifier(settings.users),
        user_header=settings.users.header,
        tasks=tasks,
        tracer=tracer,
        identity=identity,
        trust_domains=tuple(settings.identity.trust_domains),
        max_links=settings.delegation.max_links,
    )
    decider = Decider(
        engine,
        query=settings.policy.query,
        timeout_s=settings.policy.timeout_ms / 1000,
        fail_open=frozenset(settings.policy.fail_open_on_engine_error),
        stats=stats,
        tracer=tracer,
        shadow=shadow,
    )
    gate = RelayGate(
        exchange_targets=frozenset(
            name
            for name, target in settings.targets.items()
            if target.auth.type == "token-exchange"
        ),
        credentials=credentials or UpstreamCredentials(settings.targets, None),
        exchanger=exchanger or TokenExchanger(settings.targets, identity),
        max_concurrency=settings.relay.max_concurrency,
        per_target=settings.relay.per_target,
    )
    step_up = StepUp(approvals, max_ttl_s=settings.approvals.max_ttl_s)
    path = GuardedPath(
        establisher=establisher,
        decider=decider,
        step_up=step_up,
        audit=audit,
        stats=stats,
        tracer=tracer,
    )
    return Calls(
        path=path,
        decider=decider,
        gate=gate,
        establisher=establisher,
        tools=ToolCalls(path, gate, relay, settings, tracer),
        models=ModelCalls(path, gate, decider, models, budgets, settings),
        tasks=TaskCalls(path, tasks),
        asserted=AssertedCalls(path, decider),
    )
