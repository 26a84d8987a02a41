"""The arithmetic rules of ``arithmetic`` decided on OPA's AST (``divergent-arithmetic``).

``%`` and ``/`` are refused wherever OPA's parser sees ``rem`` or ``div`` (heads, bodies,
``else``, comprehensions, functions, test files). ``+ - *`` and the elements of ``sum``
(``product`` is a divergent built-in) are accepted only when PROVEN integers a double holds
(review R1: sound, not complete): integer literals up to 2^53, ``count``, the sidecar's
clocks (``input.time_ns``), a value the same body checks (``x == round(x)`` and
``abs(x) <= 9007199254740992``), integer ``data`` (the loaded documents), or a variable,
rule (every value, ``else`` too), function (its return values; its parameters as its calls'
arguments) or comprehension all of whose numbers are proven so. Anything it cannot trace is
refused. What ``inexact-integer`` already refuses (``/`` or ``*`` on an integer beyond 2^53)
is left to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.policy.arithmetic import (
    DIVISION,
    FLOAT_ARITHMETIC,
    REMAINDER,
    RULE,
    literal_issues,
)
from sidecar.policy.ast_portability import (
    _WIDE_INPUTS,
    _calls,
    _canon,
    _Checker,
    _scope_calls,
    _scopes,
    ref_name,
)
from sidecar.policy.compat import RegoModule
from sidecar.policy.portability import PortabilityIssue

__all__ = ["ast_arithmetic_issues"]

_SYMBOL = {"plus": "+", "minus": "-", "mul": "*"}
_LINE = {
    "rem": r"%",
    "div": r"/",
    "plus": r"\+",
    "mul": r"\*",
    "minus": r"(?<=[\w)\]\s])-(?=[\s\w(])",
    "sum": r"\bsum\(",  # `product` is refused as a divergent built-in already
}
# number in, number out: round(1e20) is not 1e20 on the embedded engine (int64), so a rounded
# input is no safer than the input unless bounded (``_integers``)
# (and collections in, their elements out): a number in the result is one of the arguments'
_PASS_THROUGH = frozenset(
    {"plus", "minus", "mul", "abs", "sum", "product", "round", "ceil", "floor", "max", "min"}
    | {"or", "and", "union", "intersection", "sort", "numbers.range", "object.get"}
    | {"array.concat", "array.slice", "array.reverse", "object.union", "object.remove"}
    | {"object.filter", "json.filter", "json.remove"}
)
_INTEGER_RESULTS = frozenset({"count", "indexof", "time.now_ns"})
_NOT_NUMBERS = frozenset(
    {"concat", "substring", "sprintf", "lower", "upper", "trim", "trim_space", "replace"}
    | {"split", "startswith", "endswith", "contains", "format_int", "regex.match"}
    | {"is_number", "is_string", "is_boolean", "is_array", "is_set", "is_object", "is_null"}
    | {"equal", "neq", "lt", "lte", "gt", "gte", "object.keys", "type_name"}
)
_COMPREHENSIONS = ("arraycomprehension", "setcomprehension", "objectcomprehension")
_DEPTH = 40
_MEMBER = ("internal.member_2", "internal.member_3")
_EXACT = 2**53


def _bindings(module_ast: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value a variable name is bound to anywhere in the module: ``x := t``/``x = t``
    gives ``t``; ``some x in c`` (or ``some k, x in c``) gives ``("in", c)``."""
    out: dict[str, list[Any]] = {}
    for body, _ in _scopes(module_ast):
        for expr in body:
            terms = expr.get("terms")
            if isinstance(terms, dict):  # `some ... in ...`: a declaration of symbols
                for symbol in terms.get("symbols") or []:
                    if symbol.get("type") != "call":
                        continue
                    name, *args = symbol["value"]
                    if ref_name(name) in _MEMBER and args and args[-2].get("type") == "var":
                        out.setdefault(args[-2]["value"], []).append(("in", args[-1]))
                continue
            if not isinstance(terms, list) or len(terms) != 3:
                continue
            if ref_name(terms[0]) in ("assign", "eq") and terms[1].get("type") == "var":
                out.setdefault(terms[1]["value"], []).append(terms[2])
    return out


def _integers(body: list[dict[str, Any]]) -> set[str]:
    """Operands the body checks to be integers a double holds exactly: ``x == round(x)``
    (either side) and ``abs(x) <= L`` / ``abs(x) < L`` with ``L <= 2^53`` (an integral float
    beyond that, ``1e200``, is multiplied wrongly by the embedded engine: measured)."""
    rounded, bounded = set(), set()
    for expr in body:
        terms = expr.get("terms")
        if expr.get("negated") or not isinstance(terms, list) or len(terms) != 3:
            continue
        name, left, right = ref_name(terms[0]), terms[1], terms[2]
        if name in ("gt", "gte"):
            name, left, right = "lt", right, left
        for a, b in ((left, right), (right, left)):
            if name in ("equal", "eq") and _call_of(b, "round") == _canon(a):
                rounded.add(_canon(a))
        limit = right.get("value") if right.get("type") == "number" else None
        if name in ("lt", "lte") and isinstance(limit, int) and abs(limit) <= _EXACT:
            operand = _call_of(left, "abs")
            if operand:
                bounded.add(operand)
    return rounded & bounded


def _call_of(term: Any, name: str) -> str:
    """The canonical argument of ``name(arg)`` if ``term`` is that call, else ""."""
    if not isinstance(term, dict) or term.get("type") != "call":
        return ""
    value = term["value"]
    return _canon(value[1]) if ref_name(value[0]) == name and len(value) == 2 else ""


def _functions(mods: Sequence[Any]) -> tuple[dict[str, list[tuple[str, int]]], dict[str, list]]:
    """Parameters of the policy's functions (name -> (function, position)) and every call
    of those functions (function -> argument lists), across all modules."""
    params: dict[str, list[tuple[str, int]]] = {}
    for mod in mods:
        for rule in mod.ast.get("rules") or []:
            head = rule.get("head", {})
            ref = head.get("ref") or []
            if not head.get("args") or not ref or ref[0].get("type") != "var":
                continue
            for position, arg in enumerate(head["args"]):
                if arg.get("type") == "var":
                    params.setdefault(arg["value"], []).append((ref[0]["value"], position))
    names = {fn for sites in params.values() for fn, _ in sites}
    calls: dict[str, list[list[Any]]] = {}
    for mod in mods:
        for name, args in _calls(mod.ast):
            short = name.rsplit(".", 1)[-1]
            if short in names:
                calls.setdefault(short, []).append(args)
    return params, calls


class _Arithmetic(_Checker):
    def arithmetic(self) -> list[PortabilityIssue]:
        out: list[PortabilityIssue] = []
        self.params, self.calls = _functions(self.mods)
        self.rule_values = _rule_values(self.mods)
        for mod in self.mods:
            if not mod.module.path.endswith("_test.rego"):  # test inputs: guarded per test
                out += literal_issues(mod.module)
            bound = _bindings(mod.ast)
            for body, head in _scopes(mod.ast):
                facts = self._facts(body)
                ints = _integers(body)
                for name, args in _scope_calls(body, head):
                    if name not in _LINE:
                        continue
                    line = self._line(mod, _LINE[name])  # the k-th operator, flagged or not
                    tracer = _Fraction(self, mod, bound)
                    message = self._message(name, args, facts, frozenset(ints), tracer)
                    if message:
                        out.append(PortabilityIssue(mod.module.path, line, RULE, message))
        return out

    def _message(
        self,
        name: str,
        args: list[Any],
        facts: dict[str, Any],
        ints: frozenset[str],
        tracer: _Fraction,
    ) -> str:
        if name == "rem":
            return REMAINDER
        if name == "div":
            big = any(self._big(a, facts, 0) for a in args)
            return "" if big else DIVISION  # `inexact-integer` names that one
        if name == "mul" and any(self._big(a, facts, 0) for a in args):
            return ""  # `inexact-integer` names that one
        if name == "minus" and any(_is_set(a) for a in args[:2]):
            return ""  # set difference: no arithmetic (OPA types a number - set as an error)
        for arg in args[:2] if name in _SYMBOL else args[:1]:  # not the output variable
            why = tracer.why(arg, 0, ints)
            if why:
                return FLOAT_ARITHMETIC.format(sym=_SYMBOL.get(name, f"{name}()"), why=why)
        return ""


class _Fraction:
    """Why a term may hold a number that is not an integer a double holds ("" only when every
    number it can be, or hold as an element, is PROVEN one: an integer literal, ``count``, the
    sidecar's clocks, a guarded variable, integer data, or a rule/function/variable whose every
    value is proven so). Whatever cannot be traced is refused (sound, not complete)."""

    def __init__(self, checker: _Arithmetic, mod: Any, bound: dict[str, list[Any]]) -> None:
        self.c, self.mod, self.bound = checker, mod, bound
        self.params, self.calls = checker.params, checker.calls
        self.rules = checker.rule_values.get(mod.package, {})

    def why(self, term: Any, depth: int, ints: frozenset[str]) -> str:
        if not isinstance(term, dict):
            return "a value the check cannot trace"
        if depth > _DEPTH:
            return "a value nested too deeply for the check to trace"
        if _canon(term) in ints:
            return ""
        kind, value = term.get("type"), term.get("value")
        if kind == "number":
            if isinstance(value, float):
                return f"the float literal {value}"
            return "" if abs(value) <= _EXACT else f"the integer {value} beyond 2^53"
        if kind in ("string", "boolean", "null"):
            return ""  # not a number: no arithmetic happens on it
        if kind in ("array", "set"):
            return self._first(value, depth, ints)
        if kind == "object":
            return self._first([t for pair in value for t in pair], depth, ints)
        if kind in _COMPREHENSIONS:
            inner = ints | _integers(value.get("body") or [])
            parts = [value.get(k) for k in ("key", "value", "term") if value.get(k)]
            return self._first(parts, depth, frozenset(inner))
        if kind == "ref":
            return self._ref(term, depth, ints)
        if kind == "var":
            return self._var(value, depth, ints)
        if kind == "call":
            return self._call(term, depth, ints)
        return f"a {kind} the check cannot trace"

    def _first(self, terms: Sequence[Any], depth: int, ints: frozenset[str]) -> str:
        for item in terms:
            why = self.why(item, depth + 1, ints)
            if why:
                return why
        return ""

    def _call(self, term: dict[str, Any], depth: int, ints: frozenset[str]) -> str:
        name = ref_name(term["value"][0]) or "a computed function"
        args = term["value"][1:]
        if name in ("div", "rem"):
            return "a quotient"
        if name in _INTEGER_RESULTS or name in _NOT_NUMBERS:
            return ""
        if name in _PASS_THROUGH:
            return self._first(args, depth, ints)
        short = name.removeprefix(f"data.{self.mod.package}.")
        if short in self.rules:  # a function of the package: every value it returns
            return self._values(short, depth, f"{short}(...)")
        return f"the result of {name}()"

    def _ref(self, term: dict[str, Any], depth: int, ints: frozenset[str]) -> str:
        parts = term["value"]
        head = parts[0] if parts else {}
        if head.get("type") != "var":
            return self.why(head, depth + 1, ints)  # `[1, 2][i]`: as the collection is
        name = head["value"]
        if name == "input":
            if ref_name(term) in _WIDE_INPUTS:
                return ""  # the sidecar's own clocks: always integers
            return f"{ref_name(term) or 'a value'} comes from the input"
        if name == "data":
            return self._data(parts[1:], depth)
        return self._var(name, depth, ints)  # `x.amount`, `prices.x`: as x (all of it) is

    def _data(self, parts: list[Any], depth: int) -> str:
        path = []
        for part in parts:
            if part.get("type") != "string":
                break
            path.append(part["value"])
        for size in range(len(path), 0, -1):  # a rule of a package: its values
            package = ".".join(path[: size - 1])
            rules = self.c.rule_values.get(package, {})
            if size - 1 and path[size - 1] in rules:
                return self._values(path[size - 1], depth, "data." + ".".join(path), rules)
        node: Any = self.c.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return f"data.{'.'.join(path)} is not in the loaded data"
            node = node[key]
        bad = _non_integer(node)
        return f"data.{'.'.join(path)} holds {bad}" if bad else ""

    def _var(self, name: str, depth: int, ints: frozenset[str]) -> str:
        values: list[Any] = list(self.bound.get(name, []))
        for function, position in self.params.get(name, []):  # a parameter: its arguments
            values += [a[position] for a in self.calls.get(function, []) if position < len(a)]
        if name in self.rules:
            why = self._values(name, depth, name)
            if why:
                return why
        elif name in self.mod.aliases:
            return f"{name} (an import) cannot be traced"
        elif not values:
            return f"{name} cannot be traced to a value"
        for value in values:
            if isinstance(value, tuple):  # ("in", collection): an element of it
                why = self.why(value[1], depth + 1, ints)
            else:
                why = self.why(value, depth + 1, ints)
            if why:
                return why
        return ""

    def _values(
        self, rule: str, depth: int, label: str, rules: dict[str, list] | None = None
    ) -> str:
        for term, ints in (rules if rules is not None else self.rules).get(rule, []):
            why = self.why(term, depth + 1, ints)
            if why:
                return f"{label}: {why}" if depth == 0 and not why.startswith(label) else why
        return ""


def _is_set(term: Any) -> bool:
    return isinstance(term, dict) and term.get("type") in ("set", "setcomprehension")


def _non_integer(value: Any) -> str:
    """A number under ``value`` (loaded data) that is not an integer a double holds."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            bad = _non_integer(item)
            if bad:
                return bad
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, float):
        return f"the non-integer {value}"
    return "" if abs(value) <= _EXACT else f"the integer {value} beyond 2^53"


def _rule_values(mods: Sequence[Any]) -> dict[str, dict[str, list[tuple[Any, frozenset[str]]]]]:
    """package -> rule/function name -> every value it may take (head value and key, ``else``
    values), each with the guards of the body that decides it."""
    out: dict[str, dict[str, list[tuple[Any, frozenset[str]]]]] = {}
    for mod in mods:
        rules = out.setdefault(mod.package, {})
        for rule in mod.ast.get("rules") or []:
            ref = rule.get("head", {}).get("ref") or []
            if not ref or ref[0].get("type") != "var":
                continue
            values = rules.setdefault(ref[0]["value"], [])
            while isinstance(rule, dict):
                head, ints = rule.get("head") or {}, frozenset(_integers(rule.get("body") or []))
                values += [(head[k], ints) for k in ("value", "key") if head.get(k)]
                values += [(p, ints) for p in ref[1:] if p.get("type") != "string"]
                rule = rule.get("else")
    return out


def ast_arithmetic_issues(
    modules: Sequence[tuple[RegoModule, dict[str, Any]]],
    data: Mapping[str, Any] | None = None,
) -> list[PortabilityIssue]:
    """Every ``%``, ``/`` and non-integer ``+ - *`` in ``modules`` (each with OPA's AST), and
    every number literal the embedded engine would not keep."""
    checker = _Arithmetic(modules)
    checker.data = dict(data or {})
    return checker.arithmetic()
