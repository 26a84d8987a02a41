"""Which inbound caller owns which A2A task and context (docs/a2a.md "Inbound").

The agent's A2A server keeps every caller's tasks in one store and, unless it maps the
caller to its own notion of a user, answers ``GetTask`` for any id it is given. So the
sidecar records, from the agent's own answers (unary results and every SSE event, before
any of it reaches the caller), which verified caller each task id and context id was
created for; a later request naming a task or context is passed on only for its owner
(``task_not_owned`` otherwise, an unknown task id included), and ``ListTasks``, which
would list every caller's tasks, is refused (``list_tasks_refused``). A message's
``referenceTaskIds`` (tasks an SDK agent loads and hands its executor) are checked the same way.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from sidecar.state import StateDb

__all__ = ["TaskOwners", "ids_in_answer", "ids_in_events"]

MAX_ID_CHARS = 256
_MAX_WALK = 4  # result -> task/statusUpdate/message -> fields
# One SSE event ends at a blank line (the SDK writes \r\n line ends).
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class TaskOwners:
    """The ``a2a_task_owners`` table for one agent (blocking: call it off the loop)."""

    def __init__(self, db: StateDb) -> None:
        self._db = db

    def owners(self, agent: str, task_id: str, context_id: str) -> tuple[str, str]:
        """The callers owning ``task_id`` and ``context_id`` ("" when unknown or not named)."""
        return (
            self._owner(agent, "task:" + task_id) if task_id else "",
            self._owner(agent, "context:" + context_id) if context_id else "",
        )

    def task_owners(self, agent: str, task_ids: Iterable[str]) -> dict[str, str]:
        """The caller owning each known task of ``task_ids`` (unknown ids absent; the
        listener bounds how many one request may name)."""
        found = {}
        for task_id in dict.fromkeys(task_ids):
            if owner := self._owner(agent, "task:" + task_id):
                found[task_id] = owner
        return found

    def _owner(self, agent: str, key: str) -> str:
        rows = self._db.query(
            "SELECT caller FROM a2a_task_owners WHERE agent = ? AND task_id = ?", (agent, key)
        )
        return str(rows[0]["caller"]) if rows else ""

    def record(self, agent: str, caller: str, ids: Iterable[str]) -> None:
        """``caller`` owns ``ids`` (``task:ID`` / ``context:ID``), unless one already has
        another owner: the first answer naming an id decides, forever."""
        keys = sorted(set(ids))
        if not keys:
            return
        now = time.time_ns()
        with self._db.transaction() as conn:
            for key in keys:
                conn.execute(
                    "INSERT INTO a2a_task_owners (agent, task_id, caller, created_ns) "
                    "VALUES (?,?,?,?) ON CONFLICT (agent, task_id) DO NOTHING",
                    (agent, key, caller, now),
                )


def ids_in_answer(body: bytes) -> set[str]:
    """``task:ID`` and ``context:ID`` keys named by one JSON-RPC answer (a task, a message,
    a status or artifact update; 1.0 and 0.3 shapes alike). Unreadable: none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()
    return ids_in_result(doc.get("result")) if isinstance(doc, dict) else set()


def ids_in_result(result: Any) -> set[str]:
    """The keys named by one JSON-RPC ``result``, already parsed (the outbound side's)."""
    found: set[str] = set()
    _walk(result, found, 0)
    return found


def ids_in_events(buffer: bytes) -> tuple[set[str], int]:
    """The keys named by the complete SSE events at the start of ``buffer``, and how many
    bytes those events span (the rest is an event still arriving)."""
    found: set[str] = set()
    end = 0
    for match in _EVENT_END.finditer(buffer):
        event = buffer[end : match.end()]
        data = b"\n".join(
            line[5:].lstrip(b" ")
            for line in event.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if data:
            found |= ids_in_answer(data)
        end = match.end()
    return found, end


def _walk(node: Any, found: set[str], depth: int) -> None:
    if depth > _MAX_WALK or not isinstance(node, dict):
        return
    for key, kind in (("taskId", "task:"), ("contextId", "context:")):
        _add(found, kind, node.get(key))
    # A Task names its own id as "id" (next to its contextId and status).
    if "status" in node and "contextId" in node:
        _add(found, "task:", node.get("id"))
    for value in node.values():
        if isinstance(value, dict):
            _walk(value, found, depth + 1)


def _add(found: set[str], kind: str, value: Any) -> None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        found.add(kind + value)
