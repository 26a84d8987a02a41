"""Token budgets: hard limits the sidecar enforces on model calls even if policy forgets.

Usage is read from each provider answer (``usage``; for streams the final usage chunk, or an
estimate when the provider sends none) and added to the call's task (``input.task.tokens``)
and to the subject's total for the UTC day, both in the state database. A call is refused
with ``budget_exceeded`` before it is relayed once the task has used ``budgets.task_tokens``
or the subject ``budgets.subject_tokens_per_day``.

Concurrent calls cannot all slip under a limit: before relay each call *reserves* its
estimate (the prompt's estimate plus its completion cap) in one transaction that checks the
limits and adds the estimate to both counters; when the call ends the reservation is settled
to the provider's usage (or released). So the calls in flight are counted before they finish,
and a budget is exceeded by at most one call's estimate. The reservation locks the task's and
the subject's counter rows (in that order, as settling does) so that on a shared store the
replicas' reservations queue on them rather than read the same total.

What holds, and why: a reservation is refused once a counter (usage plus reservations in
flight) has reached its limit, so the last one granted starts below the limit and the
counter ends at most one reservation above it, provided each call's usage stays within its
reservation. The reservation is an upper bound (``sidecar.token_estimate``: prompt bytes, the
output cap once per choice, the cap *sent* when a budget applies and the request has none),
so only a provider reporting more than that can go past; the excess is then charged in full
when the call settles, and every replica refuses the task or subject from then on, since the
counters live in the shared store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sidecar.budgets_settings import BudgetSettings
from sidecar.errors import SidecarError
from sidecar.state import Conn, StateDb
from sidecar.tasks import Task, TaskRegistry
from sidecar.token_estimate import MAX_TOKENS, output_cap_to_send

__all__ = ["BudgetExceeded", "Budgets", "Reservation"]


class BudgetExceeded(SidecarError):
    code = "budget_exceeded"


@dataclass
class Reservation:
    """Tokens set aside for one call in flight (settled once, when it ends)."""

    subject: str
    task_id: str
    day: str
    tokens: int
    settled: bool = False


class Budgets:
    def __init__(self, db: StateDb, settings: BudgetSettings, tasks: TaskRegistry) -> None:
        self._db = db
        self._settings = settings
        self._tasks = tasks

    @staticmethod
    def _day() -> str:
        return time.strftime("%Y-%m-%d", time.gmtime())

    def applies(self, task_id: str) -> bool:
        """Whether a call under ``task_id`` ("" for none) is counted against a limit."""
        settings = self._settings
        return bool(settings.subject_tokens_per_day or (task_id and settings.task_tokens))

    def default_output_cap(self, task_id: str) -> int | None:
        """The output cap to send the provider when neither the agent nor policy set one:
        under a budget, the cap the reservation counted (an uncapped call could produce
        many times it); otherwise none (:func:`sidecar.token_estimate.output_cap_to_send`)."""
        return output_cap_to_send(None, self.applies(task_id))

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

    def reserve(self, subject: str, task_id: str, estimate: int) -> Reservation:
        """Check the limits and set ``estimate`` tokens aside, atomically; raise
        :class:`BudgetExceeded` when a limit is already reached (counting calls in flight)."""
        settings = self._settings
        day = self._day()
        estimate = min(max(0, estimate), MAX_TOKENS)
        with self._db.transaction(durable=False) as conn:
            if task_id and settings.task_tokens:
                row = conn.execute(
                    "SELECT tokens FROM tasks WHERE id = ?" + self._db.for_update,  # noqa: S608
                    (task_id,),
                ).fetchone()
                used = int(row["tokens"]) if row else 0
                if used >= settings.task_tokens:
                    raise BudgetExceeded(
                        f"task {task_id} has used or reserved {used} tokens; its budget is "
                        f"{settings.task_tokens} (budgets.task_tokens)"
                    )
            if settings.subject_tokens_per_day:
                conn.execute(  # the row to lock
                    "INSERT INTO usage (subject, day, tokens) VALUES (?, ?, 0) "
                    "ON CONFLICT (subject, day) DO NOTHING",
                    (subject, day),
                )
                row = conn.execute(
                    "SELECT tokens FROM usage WHERE subject = ? AND day = ?"  # noqa: S608
                    + self._db.for_update,
                    (subject, day),
                ).fetchone()
                used = int(row["tokens"]) if row else 0
                if used >= settings.subject_tokens_per_day:
                    raise BudgetExceeded(
                        f"{subject} has used or reserved {used} tokens today (UTC); the budget "
                        f"is {settings.subject_tokens_per_day} (budgets.subject_tokens_per_day)"
                    )
            self._add(conn, subject, task_id, day, estimate)
        return Reservation(subject, task_id, day, estimate)

    def settle(self, reservation: Reservation, tokens: int) -> None:
        """Replace the reservation by the call's real usage (0 releases it)."""
        if reservation.settled:
            return
        reservation.settled = True
        # All of it, also above the reservation (a provider reporting more than estimated):
        # the counters then stand past the limit and every replica refuses the next call.
        delta = min(max(0, tokens), MAX_TOKENS) - reservation.tokens
        if delta:
            with self._db.transaction(durable=False) as conn:
                self._add(conn, reservation.subject, reservation.task_id, reservation.day, delta)

    @staticmethod
    def _add(conn: Conn, subject: str, task_id: str, day: str, tokens: int) -> None:
        # Never below zero (a release larger than what is left); CASE: portable SQL.
        if not tokens:
            return
        if task_id:
            conn.execute(
                "UPDATE tasks SET tokens = CASE WHEN tokens + ? > 0 THEN tokens + ? ELSE 0 END "
                "WHERE id = ?",
                (tokens, tokens, task_id),
            )
        conn.execute(
            "INSERT INTO usage (subject, day, tokens) VALUES (?, ?, ?) "
            "ON CONFLICT (subject, day) DO UPDATE SET tokens = CASE "
            "WHEN usage.tokens + ? > 0 THEN usage.tokens + ? ELSE 0 END",
            (subject, day, max(0, tokens), tokens, tokens),
        )
