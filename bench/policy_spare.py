"""What a spare interpreter costs, and that stuck ones do not leak (session 12, item 2).

With ``policy.workers: 1`` and ``inline_max_ms: 0``, an evaluation past its timeout gets a
fresh interpreter compiled in its place (sidecar/policy/_pool.py). This prints:

- the resident memory one more interpreter of the shipped policy (``rego/``) adds: the RSS and
  PSS of this process before and after compiling ``--extra`` of them (``vet=False``, as a
  replacement is compiled), per interpreter;
- RSS after each of ``--rounds`` rounds in which a slow call times out (its interpreter is
  replaced, then dropped when it ends): flat after the first rounds means nothing is kept;
- spare compiles during those rounds (one per round expected: each slow call is still running
  ``STUCK_GRACE_S`` after its timeout).

    python bench/policy_spare.py [--extra 4] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.policy import DecisionError, EmbeddedEngine  # noqa: E402
from sidecar.policy._rego import CompiledQuery  # noqa: E402
from sidecar.policy.source import load_policy_dir  # noqa: E402

QUERY = "data.agentsidecar.authz.decision"
# Costs in proportion to input.n, without `%` (refused: tests/support/policy_cost.py).
COUNT = "out := count([x | some x in numbers.range(1, input.n); y := x])"


def memory_kb() -> tuple[int, int]:
    """(RSS, PSS) of this process, kB."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def extra_interpreters(count: int) -> None:
    source = load_policy_dir(ROOT / "rego")
    kept = [CompiledQuery(source.modules, source.data, QUERY)]  # the first, vetted
    rss0, pss0 = memory_kb()
    for _ in range(count):
        kept.append(CompiledQuery(source.modules, source.data, QUERY, vet=False))
    rss1, pss1 = memory_kb()
    print(
        f"shipped policy: +{(rss1 - rss0) / count / 1024:.2f} MB RSS, "
        f"+{(pss1 - pss0) / count / 1024:.2f} MB PSS per extra interpreter ({count} compiled)"
    )


def stuck_rounds(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "p"
        directory.mkdir()
        (directory / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{COUNT}\n")
        engine = EmbeddedEngine.from_dir(tmp, "data.p.out", workers=1, memo_size=0)
    pool = engine._state.pool
    real_compile, compiles = pool._compile_more, [0]

    def counted():  # a spare compile, counted
        compiles[0] += 1
        return real_compile()

    pool._compile_more = counted
    # ~300 ms of CPU: still running STUCK_GRACE_S after its 20 ms timeout, so it is replaced
    slow, fast = {"n": 200_000}, {"n": 1}

    async def one_round() -> None:
        with contextlib.suppress(DecisionError):  # refused: it runs on, stuck
            await engine.evaluate(slow, timeout_s=0.02)
        await engine.evaluate(fast, timeout_s=10)

    try:
        for i in range(rounds):
            asyncio.run(one_round())
            while engine.stuck:  # the stuck one ends, and is dropped
                time.sleep(0.01)
            if i in (0, 1, 4, 9) or (i + 1) % 20 == 0:
                rss, _ = memory_kb()
                print(
                    f"round {i + 1}: {engine.interpreters} interpreter(s), "
                    f"{compiles[0]} spare compile(s), RSS {rss / 1024:.1f} MB"
                )
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("sidecar").setLevel(logging.ERROR)  # one warning per stuck evaluation
    extra_interpreters(args.extra)
    stuck_rounds(args.rounds)


if __name__ == "__main__":
    main()
