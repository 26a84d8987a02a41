"""``StartTask`` and ``EndTask``: audited like calls; ending a task revokes what it held.

An adapter on the guarded path: it takes only its ``attest`` and ``finish`` steps (a task
is no action policy decides; its owner is the attested caller).
"""

from __future__ import annotations

import logging
import time

import grpc

from sidecar.audit import CallRecord
from sidecar.calls.common import CallResult, Stop, TaskResult, off_loop
from sidecar.calls.guarded import GuardedPath
from sidecar.identity import CallContext
from sidecar.ids import new_decision_id
from sidecar.outcomes import status_for
from sidecar.state import StateError
from sidecar.tasks import Task, TaskError, TaskRegistry

__all__ = ["TaskCalls"]

log = logging.getLogger("sidecar.pipeline")


class TaskCalls:
    """StartTask and EndTask on the task registry."""

    def __init__(self, path: GuardedPath, tasks: TaskRegistry) -> None:
        self._path = path
        self._tasks = tasks

    async def task_rpc(
        self,
        rpc: str,
        context: CallContext,
        *,
        intent: str = "",
        ttl_s: int = 0,
        task_id: str = "",
    ) -> TaskResult:
        """StartTask or EndTask for the attested caller; audited like every call."""
        started = time.perf_counter()
        record = CallRecord(
            decision_id=new_decision_id(), rpc=rpc, time_ns=time.time_ns(), type="task"
        )
        record.action = {"kind": "task", "name": rpc}
        record.intent = intent
        task: Task | None = None
        try:
            subject = self._path.attest(record, context)
            try:
                if rpc == "StartTask":
                    task = await off_loop(self._tasks.start, subject.spiffe_id, intent, ttl_s)
                else:
                    task = await off_loop(self._tasks.end, task_id, subject.spiffe_id)
            except TaskError as exc:
                record.task = {"id": task_id} if task_id else None
                raise Stop(exc.code, str(exc)) from exc
            record.task = {
                "id": task.id,
                "intent": task.intent,
                "owner": task.owner,
                "state": task.state,
                "calls": task.calls,
                "expires_at_ns": task.expires_ns,
            }
            result = TaskResult(record.decision_id, "ok", grpc.StatusCode.OK, task=task)
        except Stop as stop:
            result = TaskResult(record.decision_id, stop.code, status_for(stop.code), str(stop))
        except StateError as exc:  # the details for operators; the agent gets the code
            log.error(
                "state database failed",
                extra={"decision_id": record.decision_id, "error": str(exc)},
            )
            result = TaskResult(
                record.decision_id,
                "state_unavailable",
                status_for("state_unavailable"),
                exc.agent_message,
            )
        call = CallResult(result.decision_id, result.code, result.status, result.message)
        finished = await self._path.finish(record, call, started)
        if finished.code != result.code:  # the audit record could not be written
            return TaskResult(
                finished.decision_id, finished.code, finished.status, finished.message
            )
        return result
