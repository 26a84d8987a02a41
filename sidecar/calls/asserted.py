"""Decide-only for a subject another enforcement point asserts (AuthZEN evaluations): the
same policy, deadline and failure codes as ``Check``, one audit record naming the caller.

An adapter on the guarded path (``run`` and ``finish``): the subject is asserted, not
established, and nothing is relayed, so it asks the decider itself.
"""

from __future__ import annotations

import logging

import grpc

from sidecar.audit import CallRecord, payload_view
from sidecar.calls.common import CallResult, action_record
from sidecar.calls.decide import Decider
from sidecar.calls.guarded import GuardedPath
from sidecar.identity import Subject
from sidecar.policy import Action, build_input
from sidecar.tracing import trace_context
from sidecar.users import User

__all__ = ["AssertedCalls"]

log = logging.getLogger("sidecar.pipeline")


class AssertedCalls:
    """Evaluations for AuthZEN callers (sidecar/authzen/)."""

    def __init__(self, path: GuardedPath, decider: Decider) -> None:
        self._path = path
        self._decider = decider

    async def evaluate(
        self,
        rpc: str,
        subject: Subject,
        action: Action,
        *,
        user: User | None,
        caller: str,
        time_remaining: float | None,
    ) -> CallResult:
        """Decide only, for a subject another enforcement point asserts (AuthZEN): the same
        policy, deadline and failure codes as ``Check``, one audit record naming ``caller``."""

        async def run(record: CallRecord, deadline: float) -> CallResult:
            record.subject = {
                "spiffe_id": subject.spiffe_id,
                "attestation": subject.attestation,
                "asserted_by": caller,
            }
            if user is not None:
                record.user = user.to_record()
            arguments = dict(action.arguments)
            record.action = action_record(action, arguments)
            input_doc = build_input(
                request_id=record.decision_id,
                time_ns=record.time_ns,
                subject=subject,
                action=action,
                user=user,
            )
            trace = trace_context(())
            decided = await self._decider.decide_recorded(
                record, input_doc, deadline, action.name, trace
            )
            decision = decided.decision
            record.action["arguments"] = payload_view(arguments, decision.obligations.log)
            return CallResult(
                record.decision_id,
                decision.code,
                grpc.StatusCode.OK,
                decision=decision,
                policy_revision=decided.revision,
            )

        return await self._path.run(rpc, time_remaining, run)
