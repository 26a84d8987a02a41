"""Provenance: the task an inbound call opens, and the transaction token that carries its
chain to the next sidecar (docs/a2a.md "Provenance").

An allowed inbound call opens a task owned by the agent (or joins the agent's live task
bound to the same transaction), whose intent is the message's skill and text, and whose
verified chain is the caller's own chain (from its transaction token) plus the caller. Every
call the agent makes under that task carries the chain (sidecar/calls/establish.py). When the
agent calls a peer under a task, :meth:`Provenance.outbound_headers` gives the ``Txn-Token``:
minted (the transaction starts here) or narrowed from the one the task was joined with.
"""

from __future__ import annotations

import dataclasses
import secrets

from sidecar.a2a.callers import Caller
from sidecar.a2a.errors import TxnEnded, TxnTokenError
from sidecar.a2a.txn_status import STATUS_PATH
from sidecar.a2a.txn_token import TXN_HEADER, TxnToken, mint, verify
from sidecar.a2a_inbound_settings import InboundSettings
from sidecar.identity import WorkloadIdentity
from sidecar.state.errors import StateBusy
from sidecar.state.offloop import off_loop
from sidecar.tasks import Provenance, Task, TaskRegistry

__all__ = ["ProvenanceBinder", "TxnEnded", "intent_of"]

MAX_INTENT_CHARS = 512


def intent_of(skill: str, texts: list[str]) -> str:
    """A task's intent from the inbound message: its skill and the start of its text."""
    text = " ".join(" ".join(texts).split())
    intent = f"{skill}: {text}" if skill else text
    return intent[:MAX_INTENT_CHARS]


class ProvenanceBinder:
    """Opens and joins inbound tasks; mints and verifies transaction tokens."""

    def __init__(
        self,
        tasks: TaskRegistry,
        identity: WorkloadIdentity,
        *,
        agent_id: str,
        trust_domains: tuple[str, ...],
        task_ttl_s: int,
        token_ttl_s: int,
        max_links: int,
        status_url: str = "",
        txn_issuers: tuple[str, ...] = (),
    ) -> None:
        self._tasks = tasks
        self._identity = identity
        self._agent_id = agent_id
        self._trust_domains = trust_domains
        self._task_ttl_s = task_ttl_s
        self._token_ttl_s = token_ttl_s
        self._max_links = max_links
        # The origin status check's base (https://LISTENER/.well-known/agent-sidecar/txn/);
        # "" without an inbound listener URL: later hops then rely on the token's exp.
        self._status_url = status_url
        # Who may sign a transaction token (every level): a2a_inbound.txn_issuers.
        self._txn_issuers = txn_issuers

    @classmethod
    def from_settings(
        cls,
        inbound: InboundSettings,
        tasks: TaskRegistry,
        identity: WorkloadIdentity,
        max_links: int,
    ) -> ProvenanceBinder:
        """The binder ``a2a_inbound`` describes: one construction for the inbound listener
        and for CallPeer on every worker, so a task's Txn-Token is the same whichever serves."""
        return cls(
            tasks,
            identity,
            agent_id=inbound.agent_id,
            trust_domains=inbound.trust_domains,
            task_ttl_s=inbound.task_ttl_s,
            token_ttl_s=inbound.txn_token_ttl_s,
            max_links=max_links,
            status_url=inbound.url.rstrip("/") + STATUS_PATH if inbound.url else "",
            txn_issuers=inbound.txn_issuers,
        )

    @property
    def agent_id(self) -> str:
        """The agent the inbound tasks belong to (default: the sidecar's own SPIFFE ID)."""
        return self._agent_id or self._identity.snapshot().spiffe_id

    def provenance(self, task_id: str) -> Provenance | None:
        return self._tasks.provenance(task_id)

    def txn_state(self, txn: str) -> str:
        """What this sidecar's store knows of ``txn``'s origin: active, ended or unknown."""
        return self._tasks.txn_state(txn)

    def _trusted(self) -> tuple[str, ...]:
        return self._trust_domains or (self._identity.snapshot().trust_domain,)

    def incoming(self, values: list[str], caller: Caller) -> TxnToken | None:
        """The caller's verified transaction token (None without one); its transaction must
        not have ended where this sidecar can see its origin (a shared store)."""
        if not values:
            return None
        if len(values) > 1:
            raise TxnTokenError(f"more than one {TXN_HEADER} header")
        if not self._txn_issuers:
            raise TxnTokenError(
                "this sidecar accepts no transaction tokens (a2a_inbound.txn_issuers is empty)"
            )
        snapshot = self._identity.snapshot()
        token = verify(
            values[0],
            bundles=snapshot.bundles,
            trust_domains=self._trusted(),
            caller=caller.id,
            max_depth=self._max_links,
            issuers=self._txn_issuers,
        )
        if self._tasks.txn_ended(token.txn):
            raise TxnEnded(f"transaction {token.txn} has ended at its origin")
        return token

    def open(self, caller: Caller, token: TxnToken | None, intent: str) -> Task:
        """The agent's task for this inbound call, its chain and transaction bound (returned
        with ``provenance`` attached). A new task and its provenance are one transaction,
        committed without waiting for the disk: a task a power cut loses is unknown after
        the restart, so every later call naming it is refused (fail closed)."""
        owner = self.agent_id
        if token is not None:
            joined = self._tasks.bound_to(token.txn, owner)
            if joined is not None:
                bound = self._tasks.provenance(joined.id)
                if bound is not None and bound.chain == (*token.chain, caller.id):
                    return dataclasses.replace(joined, provenance=bound)
        chain = (*token.chain, caller.id) if token is not None else (caller.id,)
        if len(chain) > self._max_links + 1:
            raise TxnTokenError("the delegation chain is longer than delegation.max_links")
        if token is not None:
            provenance = Provenance(
                txn=token.txn,
                requester=token.requester,
                purpose=token.purpose,
                chain=chain,
                token_exp=token.exp,
                token=token.token,
            )
        else:  # the transaction starts here: the caller is its requester
            provenance = Provenance(
                txn=_new_txn(), requester=caller.id, purpose=intent, chain=chain, origin=True
            )
        return self._tasks.start_bound(owner, intent, self._task_ttl_s, provenance, durable=False)

    async def open_task(self, caller: Caller, token: TxnToken | None, intent: str) -> Task:
        """:meth:`open` on the event loop when the store can do it without waiting (SQLite,
        its locks free: the state thread's two hand-offs saved, ~0.2-0.5 ms per inbound
        call), else on the state thread, where a locked database stalls only this call."""
        try:
            with self._tasks.without_waiting():
                return self.open(caller, token, intent)
        except StateBusy:
            return await off_loop(self.open, caller, token, intent)

    def outbound_headers(self, task: Task | str, audience: str = "") -> dict[str, str]:
        """``Txn-Token`` for a call to a peer under ``task`` (blocking: the state store).
        ``audience``: the peer's SPIFFE ID or trust domain (default: this one's)."""
        task_id = task if isinstance(task, str) else task.id
        provenance = self._tasks.provenance(task_id)
        if provenance is None:  # a task the agent started itself: the transaction starts here
            found = self._tasks.get(task_id)
            if found is None:
                raise TxnTokenError(f"no task {task_id!r} to mint a transaction token for")
            self._tasks.bind(
                task_id,
                Provenance(
                    txn=_new_txn(),
                    requester=found.owner,
                    purpose=found.intent,
                    chain=(),
                    origin=True,
                ),
            )
            # Two first calls may race: whichever bound first is the task's provenance.
            provenance = self._tasks.provenance(task_id)
            if provenance is None:
                raise TxnTokenError(f"task {task_id!r}'s provenance could not be recorded")
        elif self._tasks.txn_ended(provenance.txn):
            raise TxnEnded(f"transaction {provenance.txn} has ended at its origin")
        snapshot = self._identity.snapshot()
        prev = None
        if not provenance.origin:
            if not provenance.token or not provenance.chain:
                raise TxnTokenError("the task's transaction token is missing; cannot narrow it")
            prev = TxnToken(
                txn=provenance.txn,
                requester=provenance.requester,
                purpose=provenance.purpose,
                chain=provenance.chain[:-1],
                signer=provenance.chain[-1],
                exp=provenance.token_exp,
                iat=0,
                depth=0,
                token=provenance.token,
            )
        domain = _trust_domain(audience) or snapshot.trust_domain
        token = mint(
            snapshot,
            txn=provenance.txn,
            requester=provenance.requester,
            purpose=provenance.purpose,
            chain=provenance.chain,
            ttl_s=self._token_ttl_s,
            audience=f"spiffe://{domain}",
            prev=prev,
            status_url=self._status_url + provenance.txn if self._status_url else "",
        )
        return {TXN_HEADER: token}


def _new_txn() -> str:
    return "txn-" + secrets.token_hex(16)


def _trust_domain(value: str) -> str:
    return value.removeprefix("spiffe://").split("/", 1)[0] if value else ""
