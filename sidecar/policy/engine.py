"""The policy engine interface: input document in, raw result out, deny on anything odd."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EngineResult", "PolicyEngine"]


@dataclass(frozen=True)
class EngineResult:
    """What the engine answered. ``value`` is still unvalidated (see ``parse_decision``)."""

    defined: bool
    value: Any
    revision: str
    # The engine's own decision id (OPA's ``decision_id``), to join its logs with ours.
    engine_decision_id: str | None = None


class PolicyEngine(Protocol):
    """Evaluates the configured query. Raises ``DecisionError`` (policy_error, policy_timeout)
    when no result could be had; never returns a partial or default decision."""

    @property
    def revision(self) -> str: ...

    @property
    def name(self) -> str: ...

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult: ...

    def healthy(self) -> bool:
        """Ready to decide (OPA: its bundles are active). Blocking; call off the event loop."""
        ...

    def close(self) -> None: ...
