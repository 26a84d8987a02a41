"""Test files cut into small compile batches, so ``policy test`` holds little memory.

rego-cpp compiles a copy of the policy's rules for every ``with`` expression of every rule of
every module it is given, whichever entrypoints are asked for (~12 MB and ~50 ms each,
measured): compiling the shipped 73 tests in one bundle peaked at 2.9 GB. So each batch gets
its test file with the tests of *other* batches blanked out (lines kept, so every position
stays), at most :data:`WITH_BUDGET` ``with`` clauses per batch, and the batch's program is
dropped before the next is compiled. Helper rules, imports and the package stay whole.

Rule boundaries come from the text (blanked of strings and comments): a top-level statement
starts at column 0 with a name; everything up to the next one is its body. A slice that does
not compile is not trusted: the caller falls back to the whole file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.policy.compat import RegoModule

__all__ = ["WITH_BUDGET", "Batch", "batches"]

# ``with`` clauses per compiled batch: on rego-cpp 1.5 a batch of 12 peaked at ~240 MB a
# worker on the shipped tests (24: ~410 MB; 48: ~700 MB), at the same CPU cost.
WITH_BUDGET = 12
_STATEMENT = re.compile(r"^(?:default\s+)?([A-Za-z_]\w*)", re.MULTILINE)
_TEST = re.compile(r"(?:todo_)?test_\w+")
_TEST_HEAD = re.compile(r"\s*(?:if\b|\{|:=|=)")
_WITH = re.compile(r"(?<![\w.])with(?![\w.])")


@dataclass(frozen=True)
class Batch:
    """Refs to run together, and the test file cut down to their rules."""

    refs: tuple[str, ...]
    module: RegoModule


def _spans(module: RegoModule) -> dict[str, list[tuple[int, int]]]:
    """Character spans of each test rule's definitions (a name may be defined more than once)."""
    code = module.code
    starts = [(m.start(), m.group(1)) for m in _STATEMENT.finditer(code)]
    starts = [(s, name) for s, name in starts if name not in ("package", "import")]
    spans: dict[str, list[tuple[int, int]]] = {}
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(code)
        head = code[start:end].split(name, 1)[1]
        if _TEST.fullmatch(name) and _TEST_HEAD.match(head):  # a test, not test_f(x) helper
            spans.setdefault(name, []).append((start, end))
    return spans


def _blank(source: str, spans: list[tuple[int, int]]) -> str:
    out = list(source)
    for start, end in spans:
        for i in range(start, end):
            if out[i] != "\n":
                out[i] = " "
    return "".join(out)


def batches(module: RegoModule, refs: list[str], budget: int = WITH_BUDGET) -> list[Batch]:
    """``refs`` (``data.pkg.test_x`` of this file) in order, in batches of at most ``budget``
    ``with`` clauses (a test with more is a batch of its own)."""
    spans = _spans(module)
    code = module.code
    groups: list[list[str]] = []
    used = 0
    for ref in refs:
        name = ref.rsplit(".", 1)[-1]
        cost = sum(len(_WITH.findall(code[s:e])) for s, e in spans.get(name, []))
        if not groups or (groups[-1] and used + cost > budget):
            groups.append([])
            used = 0
        groups[-1].append(ref)
        used += cost
    out = []
    for group in groups:
        keep = {ref.rsplit(".", 1)[-1] for ref in group}
        drop = [span for name, found in spans.items() if name not in keep for span in found]
        out.append(Batch(tuple(group), RegoModule(module.path, _blank(module.source, drop))))
    return out
