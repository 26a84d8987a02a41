"""Inputs of a known CPU cost for a policy that counts to ``input.n``, measured on this machine.

Tests that need "an evaluation a little over the budget" or "far over it" pick ``n`` from one
calibration (the least CPU of a few evaluations, so a busy machine makes inputs dearer, not
cheaper) and assert what the engine did, never how long it took. The calibration runs on first
use (inside a test), never at import: a policy the engine refuses fails those tests, not the
collection of every module that imports this one.

The rule binds each element instead of testing it: the embedded engine refuses ``%`` (rego-cpp
computes some remainders wrongly) and comparisons it cannot type (sidecar/policy/vet.py), and a
binding per step still costs in proportion to ``input.n``. ``numbers.range(1, n)`` is 1..n, so
the answer is ``n`` for n >= 1 (and 2 for n = 0: the range runs down).
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.policy import EmbeddedEngine

COUNT_RULE = "out := count([x | some x in numbers.range(1, input.n); y := x])"
CALIBRATION_N = 20_000  # ~30 ms of CPU here: long enough to swamp the per-call overhead


def write_counting_policy(root: Path) -> Path:
    """``root``/p/p.rego with ``data.p.out`` = how many of 1..input.n there are."""
    directory = root / "p"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{COUNT_RULE}\n")
    return root


@functools.cache
def _engine() -> EmbeddedEngine:
    from sidecar.policy import EmbeddedEngine

    with tempfile.TemporaryDirectory() as tmp:  # compiled at load: the files are not kept
        root = write_counting_policy(Path(tmp) / "policy")
        return EmbeddedEngine.from_dir(root, "data.p.out", memo_size=0, workers=1)


@functools.cache
def cpu_ms_per_step() -> float:
    """CPU (ms) one step of the count costs in the embedded engine on this machine."""
    costs = []
    for _ in range(3):
        started = time.thread_time()
        _engine().evaluate_sync({"n": CALIBRATION_N})
        costs.append(time.thread_time() - started)
    return min(costs) * 1000 / CALIBRATION_N


def input_costing(cpu_ms: float) -> dict[str, int]:
    """An input whose evaluation costs about ``cpu_ms`` of CPU (at least that, on a busy core)."""
    return {"n": max(1, round(cpu_ms / cpu_ms_per_step()))}


def expected(input_doc: dict[str, int]) -> object:
    """The answer to ``input_doc`` evaluated directly (blocking, on this thread): the
    engine's own count, so the tests compare the engine with itself, not with Python."""
    return _engine().evaluate_sync(input_doc).value
