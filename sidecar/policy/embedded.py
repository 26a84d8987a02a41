"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp), Rego v1.

The policy is compiled once per interpreter at load (a plan each; interpreters are not
thread-safe). Each call borrows an interpreter, sets the input and runs the prepared plan:

- *inline*, on the event loop, while evaluations are fast (each at most ``inline_max_ms``):
  no thread hand-off, which on the baseline policy costs a third as much as the evaluation
  itself; ``server.workers`` processes use the other cores. An inline evaluation cannot be
  interrupted, so one that took longer than its timeout is still refused (``policy_timeout``)
  and, having blocked the loop, moves the revision to the threads for good;
- in ``workers`` threads otherwise (evaluation releases the GIL, so they run in parallel),
  where the wait is bounded by the timeout.

Hot reload: :meth:`reload` reads the directory, and if its content hash changed compiles a
complete new set of interpreters on the caller's thread (off the hot path), then swaps one
reference. A call takes that reference once when it starts, so it is evaluated, and reports
its revision, entirely under one policy. A revision that does not load (syntax, unsupported
built-in, bad data) is rejected with :class:`PolicyLoadError` and the old one stays active.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.policy._rego import ENGINE_VERSION, CompiledQuery, EvalError
from sidecar.policy._rego_input import UnrepresentableInput
from sidecar.policy.engine import EngineResult
from sidecar.policy.errors import DecisionError
from sidecar.policy.source import PolicySource, load_policy_dir
from sidecar.policy.vet_options import VetOptions

__all__ = ["EmbeddedEngine"]

log = logging.getLogger(__name__)


@dataclass
class _State:
    source: PolicySource
    pool: queue.SimpleQueue[CompiledQuery]
    inline: bool = False


class EmbeddedEngine:
    """Evaluates ``query`` against a loaded policy directory with a pool of interpreters."""

    name = "embedded"

    def __init__(
        self,
        source: PolicySource,
        query: str,
        *,
        workers: int = 2,
        inline_max_ms: float = 0.0,
        vetting: VetOptions | None = None,
    ) -> None:
        self._query = query
        self._vetting = vetting or VetOptions()
        self._workers = workers
        self._inline_max_s = inline_max_ms / 1000
        self._dir = source.root
        self._state = self._compile(source)
        self._reload_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rego")

    def _compile(self, source: PolicySource) -> _State:
        pool: queue.SimpleQueue[CompiledQuery] = queue.SimpleQueue()
        for _ in range(self._workers):
            pool.put(CompiledQuery(source.modules, source.data, self._query, vetting=self._vetting))
        return _State(source, pool, inline=self._inline_max_s > 0)

    @property
    def inline(self) -> bool:
        """Whether the active revision is evaluated on the event loop."""
        return self._state.inline

    @classmethod
    def from_dir(
        cls,
        policy_dir: str | Path,
        query: str,
        *,
        workers: int = 2,
        inline_max_ms: float = 0.0,
        vetting: VetOptions | None = None,
    ) -> EmbeddedEngine:
        return cls(
            load_policy_dir(policy_dir),
            query,
            workers=workers,
            inline_max_ms=inline_max_ms,
            vetting=vetting,
        )

    @property
    def revision(self) -> str:
        return self._state.source.revision

    @property
    def version(self) -> str:
        return ENGINE_VERSION

    def reload(self) -> bool:
        """Load the policy directory again; swap if it changed. True when a new revision is
        active. Raises ``PolicyLoadError`` (the old revision stays) if it does not load."""
        with self._reload_lock:
            source = load_policy_dir(self._dir)
            if source.revision == self._state.source.revision:
                return False
            self._state = self._compile(source)
        log.info("policy reloaded", extra={"revision": source.revision})
        return True

    def load(self, source: PolicySource) -> None:
        """Compile ``source`` (a bundle) and make it the active revision, as :meth:`reload`
        does: ``PolicyLoadError`` leaves the old one active."""
        with self._reload_lock:
            self._state = self._compile(source)
        log.info("policy activated", extra={"revision": source.revision})

    def healthy(self) -> bool:
        return True

    async def evaluate(self, input_doc: dict[str, Any], *, timeout_s: float) -> EngineResult:
        state = self._state
        try:
            if state.inline:
                defined, value = self._evaluate_inline(state, input_doc, timeout_s)
            else:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self._executor, _evaluate, state, input_doc)
                defined, value = await asyncio.wait_for(future, timeout=max(timeout_s, 0.0))
        except TimeoutError:
            raise DecisionError(
                "policy_timeout",
                f"the policy engine did not answer within {timeout_s * 1000:.0f} ms",
            ) from None
        except UnrepresentableInput as exc:
            raise DecisionError("input_unrepresentable", str(exc)) from exc
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=state.source.revision)

    def evaluate_sync(self, input_doc: dict[str, Any]) -> EngineResult:
        """Blocking evaluation without a timeout, for the CLI."""
        state = self._state
        try:
            defined, value = _evaluate(state, input_doc)
        except UnrepresentableInput as exc:
            raise DecisionError("input_unrepresentable", str(exc)) from exc
        except EvalError as exc:
            raise DecisionError("policy_error", f"policy evaluation failed: {exc}") from exc
        return EngineResult(defined=defined, value=value, revision=state.source.revision)

    def _evaluate_inline(
        self, state: _State, input_doc: dict[str, Any], timeout_s: float
    ) -> tuple[bool, Any]:
        """Evaluate on this thread. An answer later than ``timeout_s`` (wall clock) is not
        used; one that cost more than ``inline_max_ms`` of this thread's CPU sends the revision
        to the threads (CPU, not wall time: waiting for the GIL or for a core on a busy
        machine is not the policy being slow, and must not move it)."""
        if timeout_s <= 0:
            raise TimeoutError
        started, cpu_started = time.monotonic(), time.thread_time()
        try:
            return _evaluate(state, input_doc)
        finally:
            cpu = time.thread_time() - cpu_started
            if cpu > self._inline_max_s and state.inline:
                state.inline = False
                log.warning(
                    "policy evaluation is slow: evaluating in threads from now on",
                    extra={"cpu_ms": round(cpu * 1000, 1), "revision": state.source.revision},
                )
            if time.monotonic() - started > timeout_s:
                raise TimeoutError

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _evaluate(state: _State, input_doc: dict[str, Any]) -> tuple[bool, Any]:
    compiled = state.pool.get()
    try:
        return compiled.evaluate(input_doc)
    finally:
        state.pool.put(compiled)
