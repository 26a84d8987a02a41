"""Which local agent owns which task and context at each peer (docs/a2a.md "Outbound").

Several local agents can share one sidecar (identity mode jwt) while the peer sees one
caller: the sidecar's credential. So the sidecar records, from the peer's own answers
(unary results and every streamed event, before the agent sees any of it), which local
subject each task id and context id was created for, in the inbound side's
``a2a_task_owners`` table (task_owners.py) under the key ``a2a-peer:PEER``: every worker
and replica sharing the state store agrees, and it survives restarts. A request naming a
task this subject does not own at this peer (a task operation's id, a message's
``taskId`` or ``referenceTaskIds``, a ``contextId`` another subject owns) is refused before
anything is sent (``task_not_owned``); a ``contextId`` nobody owns yet is the agent's to
invent. ``ListTasks`` answers keep only the subject's own tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.a2a.task_owners import MAX_ID_CHARS, TaskOwners, ids_in_result
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


class PeerTasks:
    """The owners of one peer's tasks (blocking store calls run off the loop)."""

    def __init__(self, peer: str, db: StateDb | None) -> None:
        self._key = "a2a-peer:" + peer
        # No store: nothing is ever owned, so every named task is refused (fail closed).
        self._owners = TaskOwners(db) if db is not None else None

    def ledger(
        self, subject: str, call: A2aCall, shape: Callable[[], None] | None = None
    ) -> PeerTaskLedger:
        """The call's view: its admission check and the recording of its answers.
        ``shape`` raises the transport's refusal of a request it cannot carry: a refusal
        for its shape is the more precise one, so it is asked first."""
        return PeerTaskLedger(self, subject, call, shape)

    def lookup(self, task_ids: list[str], context_id: str) -> tuple[list[str], str]:
        """Each task id's owner, and the context's ("" when unknown or not named)."""
        if self._owners is None:
            return [""] * len(task_ids), ""
        tasks = [self._owners.owners(self._key, task_id, "")[0] for task_id in task_ids]
        context = self._owners.owners(self._key, "", context_id)[1] if context_id else ""
        return tasks, context

    def record(self, subject: str, keys: set[str]) -> None:
        if self._owners is not None and keys:
            self._owners.record(self._key, subject, keys)


@dataclass
class PeerTaskLedger:
    """One call's ownership facts: ``admit`` before the request is sent, ``answer`` on each
    message the peer sends back (before the agent sees it)."""

    tasks: PeerTasks
    subject: str
    call: A2aCall
    shape: Callable[[], None] | None = None
    # The subject owning the task the request names ("" when it names none): policy input.
    task_owner: str = ""
    _recorded: set[str] = field(default_factory=set)

    async def admit(self) -> None:
        """Refuse (``task_not_owned``) a request naming another subject's task or context,
        or a task id no answer to this subject ever named (``referenceTaskIds`` included,
        their shape and count checked by the parser, sidecar/a2a/identifiers.py)."""
        call = self.call
        operation = call.a2a_operation
        named: list[str] = []
        context = ""
        if operation in _TASK_OPERATIONS:
            named = [call.a2a_task_id]
        elif operation in ("send", "stream"):
            named = ([call.a2a_task_id] if call.a2a_task_id else []) + list(call.references)
            context = call.context_id
        elif operation == "list_tasks":
            value = call.params.get("contextId")
            context = value if isinstance(value, str) else ""
        if not named and not context:
            return  # a new message, a card, an unfiltered list: no lookup
        owners, context_owner = await off_loop(self.tasks.lookup, named, context)
        for task_id, owner in zip(named, owners, strict=True):
            if owner != self.subject:
                self._refuse(task_id)
        if context_owner not in ("", self.subject):
            self._refuse(context)
        if call.a2a_task_id and call.a2a_task_id in named:
            self.task_owner = self.subject

    def _refuse(self, what: str) -> None:
        if self.shape is not None:
            self.shape()  # malformed_request, binding_unsupported: said first
        raise _refused(what)

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with every task and context id in it recorded as this subject's
        (the first answer naming an id decides); a ``ListTasks`` result keeps only them."""
        found = ids_in_result(message.get("result"))
        if self.call.context_id and "result" in message:
            # A context the agent named, nobody's before (admit): the peer took it, and its
            # answer (a bare message) need not name it again.
            found.add("context:" + self.call.context_id)
        new = found - self._recorded
        if new:
            await off_loop(self.tasks.record, self.subject, new)
            self._recorded |= new
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
