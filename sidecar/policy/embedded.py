"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp), Rego v1.

The policy is compiled once per worker at load (a plan per interpreter; interpreters are not
thread-safe, and evaluation releases the GIL, so ``workers`` interpreters evaluate in
parallel). Each call borrows one, sets the input and runs the prepared plan.
"""

from __future__ import annotations

import asyncio
import json
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sidecar.policy._rego import ENGINE_VERSION, CompiledQuery, EvalError
from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError
from sidecar.policy.source import PolicySource, load_policy_dir

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """Evaluates ``query`` against a loaded policy directory with a pool of interpreters."""

    name = "embedded"

    def __init__(self, source: PolicySource, query: str, *, workers: int = 4) -> None:
        self._source = source
        self._query = query
        self._pool: queue.SimpleQueue[CompiledQuery] = queue.SimpleQueue()
        for _ in range(workers):
            self._pool.put(CompiledQuery(source.modules, source.data, query))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rego")

    @classmethod
    def from_dir(cls, policy_dir: str | Path, query: str, *, workers: int = 4) -> EmbeddedEngine:
        return cls(load_policy_dir(policy_dir), query, workers=workers)

    @property
    def revision(self) -> str:
        return self._source.revision

    @property
    def version(self) -> str:
        return ENGINE_VERSION

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        input_json = json.dumps(input_doc, separators=(",", ":"), allow_nan=False)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._evaluate_blocking, input_json)
        try:
            defined, value = await asyncio.wait_for(future, timeout=max(timeout_s, 0.0))
        except TimeoutError:
            raise DecisionError(
                "policy_timeout",
                f"the policy engine did not answer within {timeout_s * 1000:.0f} ms",
            ) from None
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=self.revision)

    def evaluate_sync(self, input_doc: dict[str, Any]) -> EngineResult:
        """Blocking evaluation without a timeout, for the CLI."""
        try:
            defined, value = self._evaluate_blocking(json.dumps(input_doc, allow_nan=False))
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=self.revision)

    def _evaluate_blocking(self, input_json: str) -> tuple[bool, Any]:
        compiled = self._pool.get()
        try:
            return compiled.evaluate(input_json)
        finally:
            self._pool.put(compiled)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
