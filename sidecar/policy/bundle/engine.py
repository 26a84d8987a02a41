"""The embedded engine fed by bundles: no policy until the first revision is active (or the
fallback directory's), then each activation swaps the whole revision at once.

Before any revision is active the engine is not healthy (health NOT_SERVING) and every call is
refused with ``policy_error``: never a decision without a policy. Activation compiles the new
revision off the call path, through the same load-time checks as a directory (OPA's compiler,
divergent built-ins, the static check), and swaps one reference; a call takes that reference
once, so it is decided, and audited, under exactly one revision.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sidecar.policy._rego import ENGINE_VERSION
from sidecar.policy.embedded import MEMO_SIZE, EmbeddedEngine
from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError
from sidecar.policy.source import PolicySource
from sidecar.policy.vet_options import VetOptions

if TYPE_CHECKING:
    from sidecar.policy.bundle.runtime import BundleRuntime
    from sidecar.policy.bundle.status import BundleStatusTracker

__all__ = ["BundleEngine"]


class BundleEngine:
    """A :class:`PolicyEngine` whose policy arrives by :meth:`activate`."""

    name = "embedded"

    def __init__(
        self,
        query: str,
        *,
        workers: int = 2,
        inline_max_ms: float = 0.0,
        memo_size: int = MEMO_SIZE,
        vetting: VetOptions | None = None,
        fallback: PolicySource | None = None,
    ) -> None:
        self._query = query
        self._options: dict[str, Any] = {
            "workers": workers,
            "inline_max_ms": inline_max_ms,
            "memo_size": memo_size,
            "vetting": vetting,
        }
        self._lock = threading.Lock()
        self._engine: EmbeddedEngine | None = None
        self.from_bundle = False
        self.bundles: BundleRuntime | None = None
        if fallback is not None:
            self._engine = EmbeddedEngine(fallback, query, **self._options)

    def attach(self, runtime: BundleRuntime) -> None:
        """The runtime that feeds this engine (stopped when the engine closes)."""
        self.bundles = runtime

    @property
    def bundle_tracker(self) -> BundleStatusTracker | None:
        """The bundle's status and events (``policy/export`` reports them)."""
        return self.bundles.tracker if self.bundles is not None else None

    def activate(self, source: PolicySource) -> None:
        """Compile and swap in ``source``. ``PolicyLoadError``: the active revision stays."""
        with self._lock:
            if self._engine is None:
                self._engine = EmbeddedEngine(source, self._query, **self._options)
            else:
                self._engine.load(source)
            self.from_bundle = True

    @property
    def revision(self) -> str:
        engine = self._engine
        return engine.revision if engine is not None else ""

    @property
    def version(self) -> str:
        return ENGINE_VERSION

    @property
    def inline(self) -> bool:
        engine = self._engine
        return engine.inline if engine is not None else False

    def healthy(self) -> bool:
        return self._engine is not None

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        return await self._active().evaluate(input_doc, timeout_s=timeout_s)

    def evaluate_sync(self, input_doc: dict[str, Any]) -> EngineResult:
        return self._active().evaluate_sync(input_doc)

    def _active(self) -> EmbeddedEngine:
        engine = self._engine
        if engine is None:
            raise DecisionError(
                "policy_error", "no policy is active yet (waiting for the first policy bundle)"
            )
        return engine

    def close(self) -> None:
        if self.bundles is not None:
            self.bundles.stop()
        engine = self._engine
        if engine is not None:
            engine.close()
