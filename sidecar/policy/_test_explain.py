"""Why a Rego test failed: the expected and the actual value, as ``opa test -v`` shows them.

A test of the usual shape ``lhs == rhs with input.a as ... with ...`` (the shipped tests all
are) fails with no more than "false"; here its two sides are evaluated separately, the
``with`` clauses applied to the left side, so the author sees both values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sidecar.policy.compat import RegoModule

__all__ = ["explain_failure", "split_equality"]

Query = Callable[[str], tuple[bool, Any]]


def _body(module: RegoModule, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s+if\s*\{{", module.code, re.M)
    if match is None:
        return None
    end = module.code.find("\n}", match.end())
    return None if end < 0 else module.source[match.end() : end]


def split_equality(body: str) -> tuple[str, str, str] | None:
    """``(lhs, rhs, withs)`` of a body whose first statement is ``lhs == rhs [with ...]``."""
    depth, i, in_string = 0, 0, False
    eq = with_at = None
    while i < len(body):
        ch = body[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            end = body.find("\n", i)
            i = len(body) if end < 0 else end
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and eq is None and body.startswith("==", i):
            eq = i
            i += 2
            continue
        elif depth == 0 and eq is not None and re.match(r"\swith\s", body[i - 1 : i + 5]):
            with_at = i
            break
        i += 1
    if eq is None or "\n" in body[:eq].strip():
        return None
    rhs_end = with_at if with_at is not None else len(body)
    lhs, rhs = body[:eq].strip(), body[eq + 2 : rhs_end].strip()
    withs = body[with_at:].strip() if with_at is not None else ""
    return (lhs, rhs, withs) if lhs and rhs else None


def _qualify(expr: str, module: RegoModule) -> str:
    for alias, full in module.imports().items():
        expr = re.sub(rf"(?<![\w.]){re.escape(alias)}\b", full, expr)
    return expr


def explain_failure(module: RegoModule, ref: str, query: Query) -> str | None:
    """``expected: ...`` / ``actual: ...`` lines for a failed ``==`` test, else None."""
    body = _body(module, ref.rsplit(".", 1)[1])
    parts = split_equality(body) if body else None
    if parts is None:
        return None
    lhs, rhs, withs = (_qualify(p, module) for p in parts)
    try:
        got_defined, got = query(f"{lhs} {withs}".strip())
        want_defined, want = query(rhs)
    except Exception:  # the explanation is best effort; the failure itself stands
        return None
    return (
        f"expected: {_show(want_defined, want)}\n    actual:   {_show(got_defined, got)}   ({lhs})"
    )


def _show(defined: bool, value: Any) -> str:
    return json.dumps(value, sort_keys=True) if defined else "undefined"
