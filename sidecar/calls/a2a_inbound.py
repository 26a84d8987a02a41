"""Inbound A2A calls (a peer or a person calling the agent): the guarded-path adapter.

The transport (sidecar/a2a/inbound.py) has verified the caller and read the request; this
adapter asks policy (``action.kind: a2a_inbound``, ``input.inbound``) and, only on allow, runs
the transport's relay to the agent inside the same call, so that every inbound call, however
it ends, is exactly one audit record. An allow whose obligations the transport cannot apply
(:func:`unsupported_obligations`) is refused (``obligation_unsupported``), never relayed. The
caller is the call's subject; a person calling with a user token is also ``input.user``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.audit import CallRecord, payload_view
from sidecar.calls.common import CallResult, Facts, Stop, action_record
from sidecar.calls.guarded import GuardedPath
from sidecar.classify import redact
from sidecar.identity import CallContext
from sidecar.policy import Action, Decision, Obligations
from sidecar.users import User

__all__ = ["InboundCall", "InboundCalls", "InboundRelay", "unsupported_obligations"]

# The transport's relay to the agent: the record, the decision, the deadline (loop time).
InboundRelay = Callable[[CallRecord, Decision, float], Awaitable[CallResult]]


def unsupported_obligations(obligations: Obligations) -> list[str]:
    """The obligations of an inbound allow the listener cannot apply: a credential (the agent
    is called on loopback, with none), ``max_tokens`` (no model call), an approval on an allow.
    ``log``, ``redact`` (the request's params and JSON-RPC id) and ``redact_response`` (the
    answer) it applies."""
    found = []
    if obligations.credential is not None:
        found.append("credential")
    if obligations.max_tokens is not None:
        found.append("max_tokens")
    if obligations.approval is not None:
        found.append("approval")
    return found


@dataclass(frozen=True)
class InboundCall:
    """One inbound A2A request, verified and read by the transport."""

    subject: Any  # sidecar.identity.Subject, or the transport's subject for a person
    user: User | None
    chain: tuple[str, ...]  # the caller's own verified chain (from its transaction token)
    inbound: dict[str, Any]  # input.inbound
    skill: str
    operation: str  # read | act
    data_classes: tuple[str, ...]
    arguments: dict[str, Any] = field(default_factory=dict)  # input.action.arguments
    intent: str = ""
    trace: CallContext = field(default_factory=CallContext)


class InboundCalls:
    """Decides inbound calls and runs the relay only on allow."""

    def __init__(self, path: GuardedPath) -> None:
        self._path = path

    async def call(
        self, request: InboundCall, relay: InboundRelay, time_remaining: float | None
    ) -> CallResult:
        return await self._path.run(
            "A2aInbound",
            time_remaining,
            lambda record, deadline: self._run(record, request, relay, deadline),
        )

    async def refuse(self, code: str, message: str, subject: dict[str, Any] | None) -> CallResult:
        """A caller refused before policy (unverified, a bad token, a malformed request):
        audited like every call."""

        async def step(record: CallRecord, deadline: float) -> CallResult:
            record.action = {"kind": "a2a_inbound", "name": "", "target": "self"}
            record.subject = subject
            raise Stop(code, message)

        return await self._path.run("A2aInbound", None, step)

    async def _run(
        self, record: CallRecord, request: InboundCall, relay: InboundRelay, deadline: float
    ) -> CallResult:
        trace = self._path.begin(record, request.trace, request.intent)
        subject = request.subject
        record.subject = subject.to_input() | {"spiffe_id": subject.spiffe_id}
        record.subject.pop("claims", None)
        if request.user is not None:
            record.user = request.user.to_record()
        record.delegation = list(request.chain)
        action = Action(
            kind="a2a_inbound",
            name=request.skill,
            operation=request.operation,  # type: ignore[arg-type]
            target="self",
            arguments=request.arguments,
            data_classes=request.data_classes,
        )
        record.action = action_record(action, request.arguments)
        record.action["inbound"] = request.inbound
        facts = Facts(
            subject,
            list(request.chain),
            None,
            "",
            action,
            request.arguments,
            request.user,
            inbound=request.inbound,
        )
        decided, common = await self._path.authorize(
            record,
            facts,
            acting=True,
            approval_id="",
            no_wait=True,
            deadline=deadline,
            trace=trace,
            view_arguments=True,
        )
        decision = decided.decision
        record.action["arguments"] = payload_view(request.arguments, decision.obligations.log)
        if not decision.allowed:
            raise Stop("inbound_denied", "; ".join(decision.reasons) or decision.code, **common)
        if unsupported := unsupported_obligations(decision.obligations):
            raise Stop(
                "obligation_unsupported",
                f"policy allowed this inbound call with obligations the listener cannot apply "
                f"({', '.join(unsupported)}): refused, never relayed without them",
                **common,
            )
        self._path.time_to_relay(deadline, common)
        if decision.obligations.redact:  # the intent on record is the redacted request's
            record.intent = redact(record.intent, decision.obligations.redact)
        await self._path.before_relay(record, common)
        result = await relay(record, decision, deadline)
        result.decision = decision
        result.policy_revision = common["policy_revision"]
        return result
