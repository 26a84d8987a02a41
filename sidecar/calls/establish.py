"""Who is calling and under which task: the workload (attested), its verified delegators,
the user it acts for (a verified user token) and the task the call counts against. The
guarded path's ``establish`` step; tasks and model lists use ``attest`` alone.

Each fact goes on the call's record as it is established, so a refusal still names who.

A task opened by an inbound A2A call carries its verified chain (``Task.provenance``): every
call under it gets that chain as ``input.delegation.chain`` (and ``origin``) without the agent
sending one. An agent that sends an explicit ``delegation_chain`` under such a task must send
the same chain (``delegation_invalid`` otherwise): the two never merge, so neither can widen
the other.
"""

from __future__ import annotations

import dataclasses

from sidecar.audit import CallRecord
from sidecar.calls.common import Stop, off_loop
from sidecar.identity import Attestor, CallContext, IdentityError, Subject, WorkloadIdentity
from sidecar.identity.delegation import verify_chain
from sidecar.tasks import Provenance, Task, TaskError, TaskRegistry
from sidecar.tracing import TraceContext, Tracer
from sidecar.users import User, UserTokenError, UserVerifier

__all__ = ["Establisher"]


class Establisher:
    """Establishes the facts of a call that policy will be asked about."""

    def __init__(
        self,
        *,
        attestor: Attestor,
        users: UserVerifier,
        user_header: str,
        tasks: TaskRegistry,
        tracer: Tracer,
        identity: WorkloadIdentity | None,
        trust_domains: tuple[str, ...],
        max_links: int,
    ) -> None:
        self._attestor = attestor
        self._users = users
        self._user_header = user_header
        self._tasks = tasks
        self._tracer = tracer
        # Verifies delegation chains (JWT bundles); None: no Workload API, chains refused.
        self._identity = identity
        self._trust_domains = trust_domains
        self._max_links = max_links

    async def establish(
        self,
        record: CallRecord,
        context: CallContext,
        trace: TraceContext,
        *,
        delegation_chain: tuple[str, ...],
        task_id: str,
        count: bool,
    ) -> tuple[Subject, list[str], User | None, Task | None]:
        """Who is calling (the workload, its verified delegators, the user it acts for) and
        under which task; ``count`` counts the call against the task."""
        with self._tracer.span("attest", trace):
            subject = self.attest(record, context)
            chain = self._verify_delegation(delegation_chain, subject)
            user = await self._verify_user(record, context)
        record.delegation = chain
        task = await self._use_task(record, task_id, subject, chain, count=count)
        if task is not None:
            provenance = await off_loop(self._tasks.provenance, task.id)
            if provenance is not None:
                chain = self._task_chain(record, provenance, chain)
                task = dataclasses.replace(task, provenance=provenance)
        return subject, chain, user, task

    @staticmethod
    def _task_chain(record: CallRecord, provenance: Provenance, explicit: list[str]) -> list[str]:
        """The task's verified chain; an explicit chain must be the same one."""
        chain = list(provenance.chain)
        if explicit and explicit != chain:
            raise Stop(
                "delegation_invalid",
                "the delegation chain sent differs from the verified chain of the task's inbound "
                "call; send none (the task's chain is used) or the same one",
            )
        record.delegation = chain
        record.task = (record.task or {}) | {"origin": provenance.to_input()}
        return chain

    def attest(self, record: CallRecord, context: CallContext) -> Subject:
        try:
            subject = self._attestor.attest(context)
        except IdentityError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.subject = {"spiffe_id": subject.spiffe_id, "attestation": subject.attestation}
        if subject.expires_at is not None:
            record.subject["expires_at"] = subject.expires_at
        return subject

    async def _verify_user(self, record: CallRecord, context: CallContext) -> User | None:
        """The user the agent acts for, from its user token (``users.header``); None without
        one. A token that does not verify stops the call with its ``user_token_*`` code."""
        header = self._user_header
        values = [v for k, v in context.metadata if k.lower() == header]
        if not values:
            return None
        if len(values) > 1 or not isinstance(values[0], str):
            raise Stop("user_token_malformed", f"one {header} value, as text, is allowed")
        if not self._users.enabled:
            raise Stop(
                "user_token_unexpected",
                f"a {header} was sent, but no user token issuer is configured (users.issuers)",
            )
        try:
            user = await self._users.verify(values[0])
        except UserTokenError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.user = user.to_record()
        return user

    def _verify_delegation(self, tokens: tuple[str, ...], subject: Subject) -> list[str]:
        if not tokens:
            return []
        if self._identity is None:
            raise Stop(
                "delegation_invalid",
                "this sidecar has no Workload API (JWT bundles) to verify a delegation chain with",
            )
        try:
            bundles = self._identity.jwt_bundles()
            trusted = self._trust_domains or (self._identity.snapshot().trust_domain,)
            return verify_chain(
                tokens,
                caller=subject.spiffe_id,
                bundles=bundles,
                trust_domains=trusted,
                max_links=self._max_links,
            )
        except IdentityError as exc:
            raise Stop("delegation_invalid", str(exc)) from exc

    async def _use_task(
        self,
        record: CallRecord,
        task_id: str,
        subject: Subject,
        chain: list[str],
        *,
        count: bool,
    ) -> Task | None:
        if not task_id:
            return None
        record.task = {"id": task_id}
        try:
            task = await off_loop(self._tasks.use, task_id, subject.spiffe_id, chain, count=count)
        except TaskError as exc:
            raise Stop(exc.code, str(exc)) from exc
        record.task = {
            "id": task.id,
            "intent": task.intent,
            "owner": task.owner,
            "calls": task.calls,
            "tokens": task.tokens,
        }
        return task

    async def aclose(self) -> None:
        """Close the sessions to user token issuers."""
        await self._users.aclose()
