"""Issue 25, deliverable 1: one guarded path by composition.

The path is one object with a small public surface (its steps, in order); each kind of call
is an adapter that receives it (and only the collaborators it needs) and supplies its action
and relay; no mixins, and no adapter can reach another's state. The relay slots the adapters
share keep their old guarantees (a cancelled waiter gives back what it held).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from sidecar.calls.asserted import AssertedCalls
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.models import ModelCalls
from sidecar.calls.relaying import RelayGate
from sidecar.calls.tasks import TaskCalls
from sidecar.calls.tools import ToolCalls
from sidecar.identity import UpstreamCredentials
from sidecar.mcp.calls import McpCalls
from sidecar.users import TokenExchanger

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = (ToolCalls, ModelCalls, McpCalls, TaskCalls, AssertedCalls)
ADAPTER_FILES = (
    "sidecar/calls/tools.py",
    "sidecar/calls/models.py",
    "sidecar/calls/tasks.py",
    "sidecar/calls/asserted.py",
    "sidecar/mcp/calls.py",
)
# The steps every call takes, in order, and what wraps them (run: deadline and record;
# reject: a call refused before decoding; attest: the workload alone, for tasks and lists).
SURFACE = {
    "run",
    "reject",
    "begin",
    "establish",
    "attest",
    "authorize",
    "time_to_relay",
    "before_relay",
    "finish",
    "audit_alive",
}


def _public(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)} | {
        n for n, v in vars(cls).items() if isinstance(v, staticmethod) and not n.startswith("_")
    }


def test_item25_no_mixins_every_adapter_and_the_path_stand_alone():
    for cls in (*ADAPTERS, GuardedPath):
        assert cls.__mro__ == (cls, object), f"{cls.__name__} inherits {cls.__mro__[1:]}"


def test_item25_no_class_puts_adapters_or_the_path_together_by_inheritance():
    names = {cls.__name__ for cls in (*ADAPTERS, GuardedPath)} | {"StepUp", "Decider"}
    for source in sorted((ROOT / "sidecar").rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                bases |= {b.attr for b in node.bases if isinstance(b, ast.Attribute)}
                assert not bases & names, f"{source}:{node.lineno} {node.name} mixes {bases}"


def test_item25_the_guarded_path_has_a_small_public_surface():
    assert _public(GuardedPath) == SURFACE


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda c: c.__name__)
def test_item25_each_adapter_receives_the_path(adapter):
    parameters = inspect.signature(adapter.__init__).parameters
    assert list(parameters)[1] == "path"
    assert parameters["path"].annotation in (GuardedPath, "GuardedPath")


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda c: c.__name__)
def test_item25_an_adapter_has_none_of_another_adapters_entry_points(adapter):
    mine = _public(adapter)
    for other in ADAPTERS:
        if other is not adapter:
            assert not mine & _public(other), f"{adapter.__name__} shares {mine & _public(other)}"
    assert not mine & (SURFACE - {"reject"}), "an adapter re-implements a step of the path"


@pytest.mark.parametrize("path", ADAPTER_FILES)
def test_item25_an_adapter_imports_no_other_adapter(path):
    others = {Path(p).stem for p in ADAPTER_FILES if p != path}
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            bad = len(parts) == 3 and parts[:2] in (["sidecar", "calls"], ["sidecar", "mcp"])
            assert not (bad and parts[2] in others), f"{path}:{node.lineno} imports {node.module}"


@pytest.mark.parametrize("path", ADAPTER_FILES)
def test_item25_an_adapter_touches_only_the_state_it_was_given(path):
    """Every ``self._x`` an adapter reads is one its own ``__init__`` sets (or a method of
    its own): nothing left for a mixin's ``__init__`` to provide."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Calls")):
        init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
        own = {
            t.attr
            for n in ast.walk(init)
            if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute)
        }
        own |= {f.name for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
        used = {
            n.attr
            for n in ast.walk(cls)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        }
        assert used <= own, f"{cls.name} reads {sorted(used - own)} it was never given"


def _gate(max_concurrency: int, per_target: int) -> RelayGate:
    return RelayGate(
        exchange_targets=frozenset(),
        credentials=UpstreamCredentials({}, None),
        exchanger=TokenExchanger({}, None),
        max_concurrency=max_concurrency,
        per_target=per_target,
    )


def test_item25_a_waiter_cancelled_for_the_relay_slot_gives_back_its_target_slot():
    async def scenario() -> None:
        gate = _gate(max_concurrency=1, per_target=1)
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with gate.slots("a"):
                entered.set()
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await entered.wait()

        async def wait_for_b() -> None:
            async with gate.slots("b"):
                raise AssertionError("the relay slot was held: b must not get in")

        waiter = asyncio.ensure_future(wait_for_b())
        # b holds its target slot and waits for the relay's: poll until it does.
        for _ in range(10_000):
            if gate.slots("b")._target.locked():
                break
            await asyncio.sleep(0)
        assert gate.slots("b")._target.locked()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        await holder
        # Had the cancelled waiter kept b's slot, this would never get in.
        async with asyncio.timeout(30):
            async with gate.slots("b"):
                pass

    asyncio.run(scenario())


def test_item25_one_target_cannot_hold_more_than_its_share_of_the_relay():
    async def scenario() -> None:
        gate = _gate(max_concurrency=2, per_target=1)
        release = asyncio.Event()
        inside: list[str] = []

        async def call(key: str) -> None:
            async with gate.slots(key):
                inside.append(key)
                await release.wait()

        first = asyncio.ensure_future(call("slow"))
        second = asyncio.ensure_future(call("slow"))
        other = asyncio.ensure_future(call("fast"))
        for _ in range(10_000):
            if len(inside) == 2:
                break
            await asyncio.sleep(0)
        assert sorted(inside) == ["fast", "slow"]  # the second "slow" waits for its target
        release.set()
        await asyncio.gather(first, second, other)
        assert sorted(inside) == ["fast", "slow", "slow"]

    asyncio.run(scenario())


def test_item25_the_slots_of_a_key_are_one_object_shared_by_every_adapter():
    gate = _gate(max_concurrency=4, per_target=2)
    assert gate.slots("tickets") is gate.slots("tickets")
    assert gate.slots("tickets") is not gate.slots("mcp:tickets")
