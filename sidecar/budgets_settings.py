"""The ``budgets`` section: token limits the sidecar enforces (``sidecar.budgets``)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.token_estimate import MAX_TOKENS
from sidecar.validate import check

__all__ = ["BudgetSettings"]


@dataclass(frozen=True)
class BudgetSettings:
    """Hard token limits the sidecar enforces itself, whatever policy says (0: none)."""

    task_tokens: int = 0
    subject_tokens_per_day: int = 0

    def __post_init__(self) -> None:
        for name in ("task_tokens", "subject_tokens_per_day"):
            value = getattr(self, name)
            check(value >= 0, f"{name}: must be >= 0")
            # (counts are capped there: a larger limit could never be reached)
            check(value <= MAX_TOKENS, f"{name}: must be <= {MAX_TOKENS}")
