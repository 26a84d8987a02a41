"""The ``budgets`` section: token limits the sidecar enforces (``sidecar.budgets``)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.validate import check

__all__ = ["BudgetSettings"]


@dataclass(frozen=True)
class BudgetSettings:
    """Hard token limits the sidecar enforces itself, whatever policy says (0: none)."""

    task_tokens: int = 0
    subject_tokens_per_day: int = 0

    def __post_init__(self) -> None:
        check(self.task_tokens >= 0, "task_tokens: must be >= 0")
        check(self.subject_tokens_per_day >= 0, "subject_tokens_per_day: must be >= 0")
