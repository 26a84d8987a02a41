"""Which local agent owns which task and context at each peer (docs/a2a.md "Outbound").

Several local agents can share one sidecar (identity mode jwt) while the peer sees one
caller: the sidecar's credential. So the sidecar records, from the peer's own answers
(unary results and every streamed event, before the agent sees any of it), which local
subject each task id and context id was created for, in the inbound side's
``a2a_task_owners`` table (task_owners.py) under the key ``a2a-peer:PEER``: every worker
and replica sharing the state store agrees, and it survives restarts. A request naming a
task this subject does not own at this peer (a task operation's id, a message's
``taskId`` or ``referenceTaskIds``, a ``contextId`` another subject owns) is refused before
anything is decided or sent (``task_not_owned``): a read, which marks nothing used. A
message's ``contextId`` nobody owns yet is claimed for the subject, atomically in the store,
once policy allowed the send and *before* it is sent: of two agents naming the same new
context only one is sent, whatever the peer answers, and a request policy refuses (or holds
for approval) claims nothing, so an agent with no grant at a peer cannot squat its contexts.
A context is owned under its folded key (context_key.py). ``ListTasks`` answers keep only
the subject's own tasks (naming a context there reads, never claims). A long stream marks its
ids used again (at most once per ``TOUCH_EVERY_NS``), so they outlive the retention with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sidecar.a2a.task_owners import (
    MAX_ID_CHARS,
    TOUCH_EVERY_NS,
    OwnershipLimit,
    TaskOwners,
    ids_in_result,
)
from sidecar.calls.a2a import A2aCall, PeerFailure
from sidecar.calls.common import off_loop
from sidecar.state import StateDb

__all__ = ["PeerTaskLedger", "PeerTasks"]

# The operations that name one existing task (protocol.py reads its id per version).
_TASK_OPERATIONS = frozenset(
    {
        "get_task",
        "cancel_task",
        "subscribe",
        "push_config_set",
        "push_config_get",
        "push_config_list",
        "push_config_delete",
    }
)


def _refused(what: str) -> PeerFailure:
    return PeerFailure(
        f"no task {what[:MAX_ID_CHARS]!r} of this agent's at this peer",
        code="task_not_owned",
        reached=False,
    )


def _over_limit(limit: int) -> PeerFailure:
    return PeerFailure(
        f"this agent owns {limit} task and context ids at this peer already: a new contextId "
        "is refused until unused ones expire (a2a_peers.PEER.max_owned_per_agent)",
        code="task_ownership_limit",
        reached=False,
    )


class PeerTasks:
    """The owners of one peer's tasks (blocking store calls run off the loop)."""

    def __init__(
        self,
        peer: str,
        db: StateDb | None,
        max_owned: int = 10000,
        *,
        now: Callable[[], int] = time.time_ns,
    ) -> None:
        self._key = "a2a-peer:" + peer
        # No store: nothing is ever owned, so every named task is refused (fail closed).
        self._owners = TaskOwners(db, now=now) if db is not None else None
        self._max_owned = max_owned

    def ledger(
        self, subject: str, call: A2aCall, shape: Callable[[], None] | None = None
    ) -> PeerTaskLedger:
        """The call's view: its admission check and the recording of its answers.
        ``shape`` raises the transport's refusal of a request it cannot carry: a refusal
        for its shape is the more precise one, so it is asked first."""
        return PeerTaskLedger(self, subject, call, shape)

    def lookup(
        self, task_ids: list[str], context_id: str, *, touch: bool = True
    ) -> tuple[list[str], str]:
        """Each task id's owner, and the context's ("" when unknown or not named); with
        ``touch`` the rows found are marked used (at most once per ``TOUCH_EVERY_NS``)."""
        if self._owners is None:
            return [""] * len(task_ids), ""
        owners = self._owners
        tasks = [owners.owners(self._key, task_id, "", touch=touch)[0] for task_id in task_ids]
        context = owners.owners(self._key, "", context_id, touch=touch)[1] if context_id else ""
        return tasks, context

    def admit(
        self, subject: str, task_ids: list[str], context_id: str, claim: bool
    ) -> tuple[list[str], str]:
        """Called once policy allowed the request: as :meth:`lookup` (the rows found marked
        used), and with ``claim`` a context nobody owns becomes ``subject``'s first
        (insert-if-absent), only when ``subject`` owns every task named: a request refused
        for a task claims nothing. :class:`OwnershipLimit` past ``max_owned``."""
        if self._owners is None or not claim or not context_id:
            return self.lookup(task_ids, context_id)
        tasks, owner = self.lookup(task_ids, context_id)
        if any(task_owner != subject for task_owner in tasks):
            return tasks, ""  # refused for a task: no claim
        if owner:  # an owned context (the common case) takes no write transaction
            return tasks, owner
        key = "context:" + context_id
        return tasks, self._owners.claim(self._key, subject, key, self._max_owned)

    @property
    def max_owned(self) -> int:
        return self._max_owned

    def record(self, subject: str, keys: set[str]) -> None:
        if self._owners is not None and keys:
            self._owners.record(self._key, subject, keys)

    def now(self) -> int:
        """The store's clock (ns); 0 without a store (nothing to mark used)."""
        return self._owners.now() if self._owners is not None else 0


@dataclass
class PeerTaskLedger:
    """One call's ownership facts: ``admit`` before policy decides (a read), ``claim`` once
    policy allowed the request and before it is sent, ``answer`` on each message the peer
    sends back (before the agent sees it)."""

    tasks: PeerTasks
    subject: str
    call: A2aCall
    shape: Callable[[], None] | None = None
    # The subject owning the task the request names ("" when it names none): policy input.
    task_owner: str = ""
    _recorded: set[str] = field(default_factory=set)
    # When this call last marked its recorded ids used (the store's clock, ns).
    _used_ns: int = 0

    async def admit(self) -> None:
        """Refuse (``task_not_owned``) a request naming another subject's task or context,
        or a task id no answer to this subject ever named (``referenceTaskIds`` included,
        their shape and count checked by the parser, sidecar/a2a/identifiers.py). A read:
        nothing is claimed or marked used before policy allowed the request."""
        named, context, sends = self._named()
        if not named and not context:
            return  # a new message, a card, an unfiltered list: no lookup
        owners, context_owner = await off_loop(self.tasks.lookup, named, context, touch=False)
        self._check(named, owners, context, context_owner, sends, claimed=False)

    async def claim(self) -> None:
        """Once policy allowed the request, before it is sent: claim a send's new
        ``contextId`` (insert-if-absent: of two agents racing for it, one wins and the other
        is refused ``task_not_owned``, nothing sent) and mark the ids it names used."""
        named, context, sends = self._named()
        if not named and not context:
            return
        try:
            owners, context_owner = await off_loop(
                self.tasks.admit, self.subject, named, context, sends
            )
        except OwnershipLimit:
            self._refuse(context, limit=True)
        self._check(named, owners, context, context_owner, sends, claimed=True)
        if sends and context:
            self._recorded.add("context:" + context)
        self._used_ns = self.tasks.now()

    def _named(self) -> tuple[list[str], str, bool]:
        """The task ids and the context the request names, and whether it is a send."""
        call = self.call
        operation = call.a2a_operation
        named: list[str] = []
        context = ""
        sends = operation in ("send", "stream")
        if operation in _TASK_OPERATIONS:
            named = [call.a2a_task_id]
        elif sends:
            named = ([call.a2a_task_id] if call.a2a_task_id else []) + list(call.references)
            context = call.context_id
        elif operation == "list_tasks":
            value = call.params.get("contextId")
            context = value if isinstance(value, str) else ""
        return named, context, sends

    def _check(
        self,
        named: list[str],
        owners: list[str],
        context: str,
        context_owner: str,
        sends: bool,
        *,
        claimed: bool,
    ) -> None:
        for task_id, owner in zip(named, owners, strict=True):
            if owner != self.subject:
                self._refuse(task_id)
        # Once claimed a send's context has an owner; before, and for a list, it may be nobody's.
        if context and context_owner != self.subject and (context_owner or (sends and claimed)):
            self._refuse(context)
        if self.call.a2a_task_id and self.call.a2a_task_id in named:
            self.task_owner = self.subject

    def _refuse(self, what: str, *, limit: bool = False) -> NoReturn:
        if self.shape is not None:
            self.shape()  # malformed_request, binding_unsupported: said first
        raise _over_limit(self.tasks.max_owned) if limit else _refused(what)

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with every task and context id in it recorded as this subject's
        (the first answer naming an id decides); a ``ListTasks`` result keeps only them.
        Ids already recorded are marked used again at most once per ``TOUCH_EVERY_NS``: a
        stream outliving the retention keeps its own rows."""
        # A context the agent named is already its own (claimed before sending).
        found = ids_in_result(message.get("result"))
        new = found - self._recorded
        due = bool(found) and self.tasks.now() - self._used_ns >= TOUCH_EVERY_NS
        if new or due:
            await off_loop(self.tasks.record, self.subject, found)
            self._recorded |= new
            self._used_ns = self.tasks.now()
        if self.call.a2a_operation == "list_tasks":
            return await self._own_tasks(message)
        return message

    async def _own_tasks(self, message: dict[str, Any]) -> dict[str, Any]:
        result = message.get("result")
        listed = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(listed, list):
            return message
        ids = [t.get("id") if isinstance(t, dict) else None for t in listed]
        asked = [i for i in ids if isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS]
        owners, _ = await off_loop(self.tasks.lookup, asked, "")
        mine = {i for i, owner in zip(asked, owners, strict=True) if owner == self.subject}
        kept = [t for t, i in zip(listed, ids, strict=True) if i in mine]
        assert isinstance(result, dict)
        trimmed = result | {"tasks": kept}
        if "totalSize" in result:
            trimmed["totalSize"] = len(kept)  # how many others' tasks exist is not the agent's
        return message | {"result": trimmed}
