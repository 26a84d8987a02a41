"""Token budgets: hard limits the sidecar enforces on model calls even if policy forgets.

Usage is read from each provider answer (``usage``; for streams the final usage chunk, or an
estimate when the provider sends none) and added to the call's task (``input.task.tokens``)
and to the subject's total for the UTC day, both in the state database. A call is refused
with ``budget_exceeded`` before it is relayed once the task has used ``budgets.task_tokens``
or the subject ``budgets.subject_tokens_per_day``. One call may take a budget past its limit
(its size is only known afterwards); the next one is refused.
"""

from __future__ import annotations

import time

from sidecar.config import BudgetSettings
from sidecar.errors import SidecarError
from sidecar.state import StateDb
from sidecar.tasks import Task, TaskRegistry

__all__ = ["BudgetExceeded", "Budgets"]


class BudgetExceeded(SidecarError):
    code = "budget_exceeded"


class Budgets:
    def __init__(self, db: StateDb, settings: BudgetSettings, tasks: TaskRegistry) -> None:
        self._db = db
        self._settings = settings
        self._tasks = tasks

    @staticmethod
    def _day() -> str:
        return time.strftime("%Y-%m-%d", time.gmtime())

    def subject_tokens(self, subject: str) -> int:
        rows = self._db.query(
            "SELECT tokens FROM usage WHERE subject = ? AND day = ?", (subject, self._day())
        )
        return int(rows[0]["tokens"]) if rows else 0

    def check(self, subject: str, task: Task | None) -> None:
        settings = self._settings
        if task is not None and settings.task_tokens and task.tokens >= settings.task_tokens:
            raise BudgetExceeded(
                f"task {task.id} has used {task.tokens} tokens; its budget is "
                f"{settings.task_tokens} (budgets.task_tokens)"
            )
        if settings.subject_tokens_per_day:
            used = self.subject_tokens(subject)
            if used >= settings.subject_tokens_per_day:
                raise BudgetExceeded(
                    f"{subject} has used {used} tokens today (UTC); the budget is "
                    f"{settings.subject_tokens_per_day} (budgets.subject_tokens_per_day)"
                )

    def record(self, subject: str, task_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        if task_id:
            self._tasks.add_tokens(task_id, tokens)
        with self._db.transaction(durable=False) as conn:
            conn.execute(
                "INSERT INTO usage (subject, day, tokens) VALUES (?, ?, ?) "
                "ON CONFLICT (subject, day) DO UPDATE SET tokens = tokens + excluded.tokens",
                (subject, self._day(), tokens),
            )
