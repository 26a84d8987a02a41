"""Tests of the usual shape decided through one compiled plan, without rego-cpp's ``with``.

rego-cpp compiles a copy of the policy for every ``with`` expression (~70 ms of CPU each), which
made ``policy test`` 3x slower than OPA. Almost every test has the shape

    test_x if {
        authz.decision == {...} with input.a as {...} with data.p.q as {...}
        ...
    }

and such an expression means: the rule's value, decided with that input (the ``with input``
clauses laid over an empty document) and that data (the base documents replaced), equals the
constant. That is what ``serve`` does for every call, so it is decided the same way here: the
policy is compiled once per distinct data (with the rules the tests read as entrypoints), the
input set, the rule evaluated. :func:`plan` accepts a test only when OPA's AST shows that shape
exactly (one definition, every expression ``ref == constant`` or ``constant == ref`` with at
least one ``with input``, every ``with`` value a constant, every ``with data`` target a base
document, not a rule or above one); anything else keeps rego-cpp's ``with`` (``_test_slices``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Unsupported", "equal", "plan", "policy_rules"]


class Unsupported(Exception):
    """Not of the shape decided directly: rego-cpp's ``with`` decides this test."""


@dataclass(frozen=True)
class Check:
    """One ``ref == expected`` expression of a test, and what its ``with`` clauses set."""

    rule: str  # the rule read, dotted under data: "agentsidecar.authz.decision"
    path: tuple[str, ...]  # into the rule's value: ("effect",)
    expected: Any
    input: tuple[tuple[tuple[str, ...], Any], ...]  # with input.<path> as <value>, in order
    data: tuple[tuple[tuple[str, ...], Any], ...]  # with data.<path> as <value>

    def to_json(self) -> list[Any]:
        return [self.rule, list(self.path), self.expected, _pairs(self.input), _pairs(self.data)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Check:
        rule, path, expected, inp, data = raw
        return cls(rule, tuple(path), expected, _unpairs(inp), _unpairs(data))

    def input_document(self) -> Any:
        doc: Any = {}
        for path, value in self.input:
            doc = _patched(doc, path, value)
        return doc

    def data_document(self, base: Any) -> Any:
        doc = base
        for path, value in self.data:
            doc = _patched(doc, path, value)
        return doc


def _pairs(items: tuple[tuple[tuple[str, ...], Any], ...]) -> list[Any]:
    return [[list(p), v] for p, v in items]


def _unpairs(items: list[Any]) -> tuple[tuple[tuple[str, ...], Any], ...]:
    return tuple((tuple(p), v) for p, v in items)


def _patched(doc: Any, path: tuple[str, ...], value: Any) -> Any:
    """``doc`` with ``value`` at ``path`` (a copy along the path; objects created as needed)."""
    if not path:
        return value
    if not isinstance(doc, dict):
        raise Unsupported("a with target below a value that is not an object")
    out = dict(doc)
    out[path[0]] = _patched(doc.get(path[0], {}), path[1:], value)
    return out


def policy_rules(asts: Iterable[dict[str, Any]]) -> frozenset[str]:
    """``pkg.rule`` of every rule of the (non-test) modules."""
    names = set()
    for ast in asts:
        package = ".".join(p.get("value", "") for p in ast.get("package", {}).get("path", [])[1:])
        for rule in ast.get("rules") or []:
            ref = rule.get("head", {}).get("ref") or []
            if ref and ref[0].get("type") == "var":
                names.add(f"{package}.{ref[0]['value']}")
    return frozenset(names)


def _const(term: Any) -> Any:
    kind = term.get("type") if isinstance(term, dict) else None
    if kind in ("string", "number", "boolean"):
        return term["value"]
    if kind == "null":
        return None
    if kind == "array":
        return [_const(t) for t in term["value"]]
    if kind == "object":
        out = {}
        for key, value in term["value"]:
            if key.get("type") != "string":
                raise Unsupported("an object key that is not a string")
            out[key["value"]] = _const(value)
        return out
    raise Unsupported(f"not a constant ({kind})")


def _path(term: Any, aliases: dict[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """``("data" | "input", path)`` of a static ref (through import aliases)."""
    if not isinstance(term, dict) or term.get("type") != "ref":
        raise Unsupported("not a reference")
    parts = term["value"]
    if not parts or parts[0].get("type") != "var":
        raise Unsupported("a reference with a computed head")
    rest = []
    for part in parts[1:]:
        if part.get("type") != "string":
            raise Unsupported("a reference with a computed or numeric part")
        rest.append(part["value"])
    head = parts[0]["value"]
    if head in ("data", "input"):
        return head, tuple(rest)
    if head in aliases:
        return "data", (*aliases[head], *rest)
    raise Unsupported(f"a reference to {head}")


def _check(
    expr: dict[str, Any], aliases: dict[str, tuple[str, ...]], rules: frozenset[str]
) -> Check:
    terms = expr.get("terms")
    if expr.get("negated") or not isinstance(terms, list) or len(terms) != 3:
        raise Unsupported("not an equality")
    if terms[0] != {"type": "ref", "value": [{"type": "var", "value": "equal"}]}:
        raise Unsupported("not ==")
    left, right = terms[1], terms[2]
    if left.get("type") != "ref":
        left, right = right, left
    root, path = _path(left, aliases)
    if root != "data":
        raise Unsupported("the left side is not a rule")
    for cut in range(len(path), 0, -1):
        if ".".join(path[:cut]) in rules:
            rule, into = ".".join(path[:cut]), path[cut:]
            break
    else:
        raise Unsupported("the left side is not a rule of the policy")
    inputs, data = [], []
    for clause in expr.get("with") or []:
        where, target = _path(clause.get("target"), {})
        value = _const(clause.get("value"))
        if where == "input":
            inputs.append((target, value))
            continue
        dotted = ".".join(target)
        if any(
            r == dotted or r.startswith(dotted + ".") or dotted.startswith(r + ".") for r in rules
        ):
            raise Unsupported("with on a rule, or on a document holding rules")
        data.append((target, value))
    if not inputs:
        raise Unsupported("no input given")  # an undefined input has no direct equivalent
    return Check(rule, into, _const(right), tuple(inputs), tuple(data))


def plan(test_ast: dict[str, Any], rules: frozenset[str]) -> dict[str, list[Check]]:
    """The tests of one test module (OPA's AST) decided directly, by rule name."""
    aliases: dict[str, tuple[str, ...]] = {}
    for imp in test_ast.get("imports") or []:
        parts = [p.get("value", "") for p in imp.get("path", {}).get("value", [])]
        if parts and parts[0] == "data":
            aliases[imp.get("alias") or parts[-1]] = tuple(parts[1:])
    definitions: dict[str, list[dict[str, Any]]] = {}
    for rule in test_ast.get("rules") or []:
        name = rule.get("head", {}).get("name", "")
        definitions.setdefault(name, []).append(rule)
    out: dict[str, list[Check]] = {}
    for name, found in definitions.items():
        if not name.startswith("test_") or len(found) != 1:
            continue
        rule = found[0]
        head = rule["head"]
        if (
            head.get("args")
            or "else" in rule
            or head.get("value")
            != {
                "type": "boolean",
                "value": True,
            }
        ):
            continue
        try:
            out[name] = [_check(expr, aliases, rules) for expr in rule.get("body") or []]
        except Unsupported:
            continue
        if not out[name]:
            del out[name]
    return out


def _canon(value: Any) -> Any:
    """Rego's equality: numbers by value (1 == 1.0), booleans apart from numbers."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("a", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    raise TypeError(type(value).__name__)


def equal(left: Any, right: Any) -> bool:
    return bool(_canon(left) == _canon(right))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
