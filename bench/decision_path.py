"""CPU per policy decision, step by step, on the shipped policy: a standalone harness (no
sockets, no other process) so that the figures are this thread's CPU (``time.thread_time``),
robust to a shared, loaded machine.

For four typical decisions (a tool call, a Check, an A2A outbound ``SendMessage`` with the
peer's pinned card, an A2A inbound call), it times each step of the decision path as the
sidecar runs it: building the input (``build_input``), handing it to rego-cpp (``set_input``),
the Rego evaluation, the output parse, the contract check (``parse_decision``), the whole
engine call (``EmbeddedEngine.evaluate``, inline as configured by default) and the whole
``Decider.decide_recorded`` (span, record, log record). ``--profile`` adds a cProfile of the
``decide_recorded`` loop.

    python bench/decision_path.py [--calls 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regopy.rego_shared import rego_bundle_query  # noqa: E402

import sidecar  # noqa: E402,F401  (first: the engine's library before grpc's)
from sidecar.audit import CallRecord  # noqa: E402
from sidecar.calls.decide import Decider  # noqa: E402
from sidecar.identity import Subject  # noqa: E402
from sidecar.policy import (  # noqa: E402
    Action,
    EmbeddedEngine,
    TaskInfo,
    _rego,
    build_input,
    parse_decision,
)
from sidecar.policy._rego_input import set_input  # noqa: E402

try:
    from sidecar.policy.embedded import MEMO_SIZE
except ImportError:  # before the decision memo
    MEMO_SIZE = 0
from sidecar.tracing import TraceContext, Tracer  # noqa: E402

QUERY = "data.agentsidecar.authz.decision"
SUPPORT = "spiffe://demo.example/agent/support"
CARD = {
    "digest": "sha256:" + "a" * 64,
    "pinned_digest": "sha256:" + "a" * 64,
    "changed": False,
    "signed": True,
    "signer": "kid-1",
    "skills": ["lookup", "refund", "close_account"],
}


def _subject(spiffe_id: str) -> Subject:
    return Subject(spiffe_id=spiffe_id, attestation="pod-svid")


def scenarios(distinct: bool = False) -> dict[str, Callable[[int], dict[str, Any]]]:
    """Each a function of the call number to a fresh input, as the guarded path builds it;
    ``distinct``: an argument differs on every call, so that no decision repeats."""

    def args(i: int, base: dict[str, Any]) -> dict[str, Any]:
        return base | {"n": i} if distinct else base

    task = TaskInfo(id="t-01J0000000000000000000000", intent="support", calls=3, tokens=0, age_s=4)

    def tool(i: int) -> dict[str, Any]:
        return build_input(
            request_id=f"01J{i:023d}",
            time_ns=1_763_700_000_000_000_000 + i,
            subject=_subject(SUPPORT),
            action=Action(
                kind="tool",
                name="tickets.get",
                operation="read",
                target="tickets",
                arguments=args(i, {"id": "T-123", "fields": ["status", "owner"]}),
            ),
            task=task,
        )

    def check(i: int) -> dict[str, Any]:
        return build_input(
            request_id=f"01J{i:023d}",
            time_ns=1_763_700_000_000_000_000 + i,
            subject=_subject(SUPPORT),
            action=Action(
                kind="tool",
                name="payments.refund",
                operation="act",
                target="payments",
                arguments=args(i, {"amount": 42.5, "currency": "EUR", "note": "refund ticket 123"}),
            ),
            task=task,
        )

    def a2a_out(i: int) -> dict[str, Any]:
        return build_input(
            request_id=f"01J{i:023d}",
            time_ns=1_763_700_000_000_000_000 + i,
            subject=_subject(SUPPORT),
            action=Action(
                kind="a2a",
                name="billing.refund",
                operation="act",
                target="billing",
                arguments=args(i, {"message": {"role": "user", "parts": [{"text": "refund 42"}]}}),
                details={
                    "method": "SendMessage",
                    "a2a_operation": "send",
                    "skill": "refund",
                    "card": CARD,
                },
            ),
            task=task,
        )

    def a2a_in(i: int) -> dict[str, Any]:
        return build_input(
            request_id=f"01J{i:023d}",
            time_ns=1_763_700_000_000_000_000 + i,
            subject=_subject(SUPPORT),
            action=Action(
                kind="a2a_inbound",
                name="refund",
                operation="act",
                target="self",
                arguments=args(i, {"message": {"role": "user", "parts": [{"text": "refund 42"}]}}),
            ),
            delegation_chain=(SUPPORT,),
            inbound={
                "agent": "spiffe://demo.example/agent/billing",
                "caller": {"kind": "workload", "id": SUPPORT, "via": "mtls"},
                "skill": "refund",
                "a2a_operation": "send",
                "method": "SendMessage",
            },
        )

    suffix = " (distinct)" if distinct else ""
    return {
        "tool" + suffix: tool,
        "check" + suffix: check,
        "a2a out" + suffix: a2a_out,
        "a2a in" + suffix: a2a_in,
    }


def cpu_us(step: Callable[[int], Any], calls: int) -> float:
    """Median of 5 batches of this thread's CPU per call, in µs."""
    batches = []
    per = max(calls // 5, 1)
    for b in range(5):
        started = time.thread_time()
        for i in range(per):
            step(b * per + i)
        batches.append((time.thread_time() - started) / per * 1e6)
    return statistics.median(batches)


def measure(name: str, make: Callable[[int], dict[str, Any]], calls: int) -> dict[str, float]:
    engine = EmbeddedEngine.from_dir(ROOT / "rego", QUERY, workers=1, inline_max_ms=5.0)
    engine_memo = engine.memo if hasattr(engine, "memo") else None
    compiled = engine._state.pool.get()
    engine._state.pool.put(compiled)
    interp, bundle = compiled._interp, compiled._bundle
    docs = [make(i) for i in range(calls)]

    def forget() -> None:
        """Each step starts with nothing remembered (a distinct run then never hits)."""
        if engine_memo is not None:
            engine._state.memo = type(engine_memo)(MEMO_SIZE)

    expect = engine.evaluate_sync(docs[0]).value
    out: dict[str, float] = {}
    out["build input"] = cpu_us(make, calls)

    def hand_over(i: int) -> None:
        set_input(interp._impl, interp.set_input_term, docs[i])

    out["set_input"] = cpu_us(hand_over, calls)
    set_input(interp._impl, interp.set_input_term, docs[0])
    out["evaluate (rego)"] = cpu_us(
        lambda i: _rego._run(lambda: rego_bundle_query(interp._impl, bundle._impl)), calls
    )
    forget()
    out["engine (evaluate_sync)"] = cpu_us(lambda i: engine.evaluate_sync(docs[i]), calls)
    out["parse_decision"] = cpu_us(lambda i: parse_decision(expect), calls)
    decider = Decider(
        engine,
        query=QUERY,
        timeout_s=1.0,
        fail_open=frozenset(),
        stats=Counter(),
        tracer=Tracer(),
    )
    trace = _trace()
    loop = asyncio.new_event_loop()

    async def decide_loop(n: int, offset: int) -> None:
        for i in range(n):
            record = CallRecord(decision_id=docs[i]["request_id"], rpc="CallTool", time_ns=0)
            await decider.decide_recorded(record, docs[(offset + i) % calls], 1e18, name, trace)

    async def engine_loop(n: int, offset: int) -> None:
        for i in range(n):
            await engine.evaluate(docs[(offset + i) % calls], timeout_s=1.0)

    def batched(body: Callable[[int, int], Any]) -> float:
        forget()
        batches = []
        per = max(calls // 5, 1)
        for b in range(5):
            started = time.thread_time()
            loop.run_until_complete(body(per, b * per))
            batches.append((time.thread_time() - started) / per * 1e6)
        return statistics.median(batches)

    out["engine.evaluate (inline)"] = batched(engine_loop)
    out["decide_recorded"] = batched(decide_loop)
    memo = getattr(engine._state, "memo", None)
    if memo is not None:
        out["memo hits %"] = 100 * memo.hits / max(memo.hits + memo.misses, 1)
    out["build + decide_recorded"] = out["build input"] + out["decide_recorded"]
    measure.profile = lambda: loop.run_until_complete(decide_loop(calls, 0))  # type: ignore[attr-defined]
    measure.effect = parse_decision(expect).effect  # type: ignore[attr-defined]
    return out


def _trace() -> TraceContext:
    from sidecar.tracing import trace_context

    return trace_context(())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="cProfile decide_recorded")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    table: dict[str, dict[str, float]] = {}
    effects = {}
    for name, make in [*scenarios().items(), *scenarios(distinct=True).items()]:
        table[name] = measure(name, make, args.calls)
        effects[name] = measure.effect  # type: ignore[attr-defined]
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            measure.profile()  # type: ignore[attr-defined]
            profiler.disable()
            print(f"--- cProfile: decide_recorded, {name} ---")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
    names = list(table)
    print("µs of CPU per decision (this thread), median of 5 batches of", args.calls // 5)
    for half in (names[:4], names[4:]):
        print(f"  {'step':26}" + "".join(f"{n:>18}" for n in half))
        print(f"  {'(effect)':26}" + "".join(f"{effects[n]:>18}" for n in half))
        for step in table[half[0]]:
            print(f"  {step:26}" + "".join(f"{table[n].get(step, 0):18.1f}" for n in half))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
