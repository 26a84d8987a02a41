"""The portability rules of ``portability`` decided on OPA's AST instead of the text.

The same rules (``divergent-builtin``, ``sprintf-format``, ``not-undefined``,
``untyped-comparison``), but what is a call, a negation or a comparison is what OPA's parser
says (``rego.parse_module``, through ``opa_compiler.check``): a call split over lines, at
column 0, nested in a head, an ``else``, a comprehension or an ``every`` is the same call.
Which names are the policy's own functions is decided across every module of a package.

The AST carries no positions, so the line named in a finding is the matching occurrence in the
text (the k-th call of that name, the k-th ``not``); the finding itself never depends on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.policy._rego_input import WIDE_INTEGERS
from sidecar.policy.compat import RegoModule
from sidecar.policy.portability import (
    DIVERGENT_BUILTINS,
    VERIFIED_BUILTINS,
    PortabilityIssue,
)

__all__ = ["OPERATORS", "ast_portability_issues", "ref_name"]

# OPA's internal names of the operators (allowed: they are the language, verified by the suite).
OPERATORS = frozenset(
    {
        "eq", "assign", "equal", "neq", "lt", "lte", "gt", "gte",
        "plus", "minus", "mul", "div", "rem", "and", "or",
        "internal.member_2", "internal.member_3",
    }
)  # fmt: skip
_COMPARE = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_NUMBER_RESULT = frozenset(
    {"abs", "ceil", "floor", "round", "count", "sum", "product", "time.now_ns", "numbers.range"}
)
_STRING_RESULT = frozenset(
    {
        "concat", "sprintf", "replace", "substring", "trim", "trim_left", "trim_prefix",
        "trim_right", "trim_space", "trim_suffix", "strings.reverse", "strings.replace_n",
        "base64.encode", "base64url.encode", "crypto.sha256", "type_name",
    }
)  # fmt: skip
_SPRINTF_VERB = re.compile(r"%(.)")
_EXACT_INT = 2**53  # integers a double holds exactly
# the sidecar's nanosecond clocks, the only input integers allowed beyond 2^53
_WIDE_INPUTS = frozenset(f"input.{path}" for path in WIDE_INTEGERS)
# Operators rego-cpp gets wrong on larger integers (measured against OPA): `/` in a double,
# `==`/`!=` undefined instead of false, `*` past 64 bits (`+ -` and `< >` are exact on them).
# `%` is wrong even on small integers (`70 % 7` is 2) and `/`, `+ - *` on non-integers are
# rounded: all refused by `ast_arithmetic` (`divergent-arithmetic`).
_INEXACT_ON_BIG = {"div": "/", "mul": "*", "equal": "==", "neq": "!="}


@dataclass
class _Package:
    rules: set[str] = field(default_factory=set)


@dataclass
class _Module:
    module: RegoModule
    ast: dict[str, Any]
    package: str
    aliases: set[str]
    seen: dict[str, int] = field(default_factory=dict)  # occurrences located so far, per key


def ref_name(term: Any) -> str | None:
    """``object.get`` for the ref ``object["get"]``; None for anything not a static name."""
    if not isinstance(term, dict) or term.get("type") != "ref":
        return None
    parts = term["value"]
    if not parts or parts[0].get("type") != "var":
        return None
    names = [parts[0]["value"]]
    for part in parts[1:]:
        if part.get("type") != "string":
            return None
        names.append(part["value"])
    return ".".join(names)


def _calls(node: Any, *, nested: bool = True) -> Iterator[tuple[str, list[Any]]]:
    """``(name, args)`` of every call anywhere under ``node``: expression calls
    (``terms`` is a list) and call terms, in heads, bodies, ``else``, comprehensions
    (with ``nested=False``: not inside the bodies of comprehensions or ``every``)."""
    if isinstance(node, dict):
        terms = node.get("terms")
        if "index" in node and isinstance(terms, list) and terms:
            name = ref_name(terms[0])
            if name is not None:
                yield name, terms[1:]
        if node.get("type") == "call" and isinstance(node.get("value"), list):
            name = ref_name(node["value"][0])
            if name is not None:
                yield name, node["value"][1:]
        for key, value in node.items():
            if nested or key != "body":
                yield from _calls(value, nested=nested)
    elif isinstance(node, list):
        for item in node:
            yield from _calls(item, nested=nested)


def _scopes(node: Any) -> Iterator[tuple[list[dict[str, Any]], Any]]:
    """Every body (a list of expressions) under ``node`` with the head it decides (a rule's
    or an ``else``'s; None for comprehensions and ``every``), outermost first."""
    if isinstance(node, dict):
        body = node.get("body")
        if isinstance(body, list) and all(isinstance(e, dict) and "index" in e for e in body):
            yield body, node.get("head")
        for value in node.values():
            yield from _scopes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _scopes(item)


def _bodies(node: Any) -> Iterator[list[dict[str, Any]]]:
    for body, _ in _scopes(node):
        yield body


def _scope_calls(body: list[dict[str, Any]], head: Any) -> Iterator[tuple[str, list[Any]]]:
    """The calls of one scope: its expressions and its head's value, key and arguments."""
    for expr in body:
        yield from _calls(expr, nested=False)
    if isinstance(head, dict):
        for key in ("value", "key"):
            yield from _calls(head.get(key), nested=False)


def _canon(term: Any) -> str:
    return json.dumps(term, sort_keys=True)


class _Checker:
    def __init__(self, modules: Sequence[tuple[RegoModule, dict[str, Any]]]) -> None:
        self.packages: dict[str, _Package] = {}
        self.mods: list[_Module] = []
        for module, ast in modules:
            path = ast.get("package", {}).get("path", [])[1:]
            package = ".".join(p.get("value", "") for p in path)
            aliases = set()
            for imp in ast.get("imports") or []:
                parts = imp.get("path", {}).get("value", [])
                alias = imp.get("alias") or (parts[-1].get("value") if parts else "")
                if alias:
                    aliases.add(alias)
            pkg = self.packages.setdefault(package, _Package())
            for rule in ast.get("rules") or []:
                ref = rule.get("head", {}).get("ref") or []
                if ref and ref[0].get("type") == "var":
                    pkg.rules.add(ref[0]["value"])
            self.mods.append(_Module(module, ast, package, aliases))

    # -- names ----------------------------------------------------------------------------

    def _is_own(self, mod: _Module, name: str) -> bool:
        head = name.split(".", 1)[0]
        return (
            head in ("data", "input")
            or head in mod.aliases
            or head in self.packages[mod.package].rules
        )

    def _is_reference(self, mod: _Module, term: Any) -> bool:
        """A value that may be undefined: a ref into input, data, a rule or an import, or a
        ref with a computed index; searched through composite terms and calls."""
        if isinstance(term, dict):
            kind = term.get("type")
            if kind == "ref":
                parts = term["value"]
                head = parts[0].get("value") if parts and parts[0].get("type") == "var" else ""
                own = head in ("input", "data") or self._is_own(mod, head)
                dynamic = any(p.get("type") not in ("string", "number") for p in parts[1:])
                if own or dynamic:
                    return True
            if kind == "var" and self._is_own(mod, term.get("value", "")):
                return True
            return any(self._is_reference(mod, v) for v in term.values())
        if isinstance(term, list):
            return any(self._is_reference(mod, v) for v in term)
        return False

    # -- positions (for the message only) -------------------------------------------------

    def _line(self, mod: _Module, pattern: str) -> int:
        """Line of the next not-yet-reported occurrence of ``pattern`` in the code."""
        code = mod.module.code
        index = mod.seen.get(pattern, 0)
        mod.seen[pattern] = index + 1
        matches = list(re.finditer(pattern, code))
        if not matches:
            return 0
        match = matches[min(index, len(matches) - 1)]
        return code.count("\n", 0, match.start()) + 1

    def _call_line(self, mod: _Module, name: str) -> int:
        dotted = r"\s*\.\s*".join(re.escape(p) for p in name.split("."))
        return self._line(mod, rf"(?<![\w.]){dotted}\s*\(")

    # -- rules ----------------------------------------------------------------------------

    def issues(self) -> list[PortabilityIssue]:
        out: list[PortabilityIssue] = []
        for mod in self.mods:
            out += self._builtins(mod)
            out += self._negations(mod)
            if not mod.module.path.endswith("_test.rego"):
                out += self._comparisons(mod)
                out += self._big_integers(mod)
                out += self._quoted_formats(mod)
        return sorted(out, key=lambda i: (i.file, i.line, i.rule, i.message))

    def _builtins(self, mod: _Module) -> list[PortabilityIssue]:
        out = []
        for name, args in _calls(mod.ast):
            if name in OPERATORS or self._is_own(mod, name):
                continue
            line = self._call_line(mod, name)
            if name == "sprintf":
                out += self._sprintf(mod, args, line)
                continue
            if name in DIVERGENT_BUILTINS:
                why = f"which {DIVERGENT_BUILTINS[name]} on the embedded engine"
            elif name not in VERIFIED_BUILTINS:
                why = (
                    "which is not among the built-ins verified to decide on the embedded "
                    "engine as on OPA (docs/policy-engines.md lists them)"
                )
            else:
                continue
            out.append(PortabilityIssue(mod.module.path, line, "divergent-builtin", why, name))
        return out

    def _sprintf(self, mod: _Module, args: list[Any], line: int) -> list[PortabilityIssue]:
        fmt = args[0] if args else None
        if not isinstance(fmt, dict) or fmt.get("type") != "string":
            why = "the format must be a string literal"
        else:
            verbs = set(_SPRINTF_VERB.findall(fmt["value"].replace("%%", ""))) - {"v"}
            if not verbs:
                return []
            bad = ", ".join(sorted(f"%{v}" for v in verbs))
            why = f"{bad} formats differently on the embedded engine; use %v"
        return [PortabilityIssue(mod.module.path, line, "sprintf-format", why)]

    def _negations(self, mod: _Module) -> list[PortabilityIssue]:
        out = []
        for body in _bodies(mod.ast):
            for expr in body:
                if not expr.get("negated"):
                    continue
                line = self._line(mod, r"(?<![\w.])not\b")
                terms = expr.get("terms")
                operands = terms[1:] if isinstance(terms, list) else [terms]
                called = isinstance(terms, list)
                nested = any(True for _ in _calls(operands))
                if not (called or nested or self._dynamic_ref(mod, terms)):
                    continue  # `not input.x`, `not rule`: the same on both engines
                if self._is_reference(mod, operands):
                    out.append(
                        PortabilityIssue(
                            mod.module.path,
                            line,
                            "not-undefined",
                            "`not` over a call, operator or index whose operand may be "
                            "undefined (input, data, a rule): OPA is undefined when it is, the "
                            "embedded engine true; bind it first (`v := ...` then `not` over v)",
                        )
                    )
        return out

    def _dynamic_ref(self, mod: _Module, term: Any) -> bool:
        if isinstance(term, dict) and term.get("type") == "ref":
            return any(p.get("type") not in ("string", "number") for p in term["value"][1:])
        return False

    def _comparisons(self, mod: _Module) -> list[PortabilityIssue]:
        out = []
        for body, head in _scopes(mod.ast):
            facts = self._facts(body)
            for name, args in _scope_calls(body, head):
                if name not in _COMPARE or len(args) != 2:
                    continue
                left, right = (self._type(a, facts, 0) for a in args)
                if left is not None and left == right:
                    continue
                sym = _COMPARE[name]
                line = self._line(mod, rf"(?<![<>=!:]){re.escape(sym)}(?!=)")
                out.append(
                    PortabilityIssue(
                        mod.module.path,
                        line,
                        "untyped-comparison",
                        f"`{sym}` between values whose types the rule does not establish "
                        f"as the same ({left or 'unknown'} {sym} {right or 'unknown'}): "
                        "OPA orders values across types, the embedded engine is undefined; "
                        "check with is_number(x) / is_string(x) in the same body",
                    )
                )
        return out

    def _quoted_formats(self, mod: _Module) -> list[PortabilityIssue]:
        """``sprintf("%v", [concat(...)])``: rego-cpp keeps the JSON quotes of a string that
        ``concat`` or ``replace`` built (also through a variable or another ``concat``) and
        prints them, unescaped: the result differs from OPA's, and the decision it reaches is
        malformed (measured in tests/oracle/test_semantics.py)."""
        out = []
        quoted_rules = self._quoted_rules(mod)
        for body, head in _scopes(mod.ast):
            facts = self._facts(body)
            for name, args in _scope_calls(body, head):
                if name != "sprintf" or len(args) != 2:
                    continue
                values = args[1].get("value") if args[1].get("type") == "array" else None
                if not isinstance(values, list):
                    continue
                if any(self._quoted(v, facts, quoted_rules, 0) for v in values):
                    out.append(
                        PortabilityIssue(
                            mod.module.path,
                            self._call_line(mod, "sprintf"),
                            "sprintf-format",
                            "`%v` of a string built by concat or replace: the embedded engine "
                            "prints it with its quotes (OPA without); format the parts instead "
                            '(`sprintf("%v/%v", [a, b])`)',
                        )
                    )
        return out

    def _quoted_rules(self, mod: _Module) -> set[str]:
        """Rules of ``mod``'s package whose value is a concat/replace result."""
        found: set[str] = set()
        for _ in range(3):
            for other in self.mods:
                if other.package != mod.package:
                    continue
                for rule in other.ast.get("rules") or []:
                    head = rule.get("head", {})
                    ref = head.get("ref") or []
                    if not ref or ref[0].get("type") != "var":
                        continue
                    facts = self._facts(rule.get("body") or [])
                    if self._quoted(head.get("value"), facts, found, 0):
                        found.add(ref[0]["value"])
        return found

    def _quoted(self, term: Any, facts: dict[str, Any], rules: set[str], depth: int) -> bool:
        if not isinstance(term, dict) or depth > 8:
            return False
        fact = facts.get(_canon(term))
        if isinstance(fact, tuple):
            return self._quoted(fact[1], facts, rules, depth + 1)
        if term.get("type") == "var":
            return term.get("value") in rules
        if term.get("type") == "call":
            return ref_name(term["value"][0]) in ("concat", "replace")
        return False

    def _big_integers(self, mod: _Module) -> list[PortabilityIssue]:
        """Arithmetic or equality on an integer beyond 2^53 (``input.time_ns``,
        ``time.now_ns()``, a literal, or a variable holding one): rego-cpp computes it in a
        double (``floor(1764999999999999999 / 1000000000)`` is 1765000000; OPA: 1764999999)."""
        out = []
        for body, head in _scopes(mod.ast):
            facts = self._facts(body)
            for name, args in _scope_calls(body, head):
                if name not in _INEXACT_ON_BIG or not any(self._big(a, facts, 0) for a in args):
                    continue
                sym = _INEXACT_ON_BIG[name]
                line = self._line(mod, rf"(?<![<>=!:]){re.escape(sym)}(?![=])")
                out.append(
                    PortabilityIssue(
                        mod.module.path,
                        line,
                        "inexact-integer",
                        f"`{sym}` on an integer beyond 2^53 (input.time_ns, "
                        "input.approval.approved_at_ns, time.now_ns(), or a literal): "
                        "the embedded engine divides in a double, multiplies in "
                        "64 bits and is undefined on ==/!=, where OPA is exact; "
                        "compare the integer itself with an integer literal "
                        "(`input.time_ns >= 1765000000000000000`), which is exact on both",
                    )
                )
        return out

    def _big(self, term: Any, facts: dict[str, Any], depth: int) -> bool:
        if not isinstance(term, dict) or depth > 8:
            return False
        kind = term.get("type")
        if kind == "number":
            value = term.get("value")
            return isinstance(value, int) and abs(value) > _EXACT_INT
        if kind == "ref" and ref_name(term) in _WIDE_INPUTS:
            return True
        fact = facts.get(_canon(term))
        if isinstance(fact, tuple):
            return self._big(fact[1], facts, depth + 1)
        if kind == "call":
            name = ref_name(term["value"][0])
            if name == "time.now_ns":
                return True
            if name in ("plus", "minus", "mul", "abs"):
                return any(self._big(a, facts, depth + 1) for a in term["value"][1:])
        return False

    def _facts(self, body: list[dict[str, Any]]) -> dict[str, Any]:
        """``is_number``/``is_string`` checks and assignments of one body, by operand."""
        facts: dict[str, Any] = {}
        for expr in body:
            terms = expr.get("terms")
            if expr.get("negated") or not isinstance(terms, list) or len(terms) < 2:
                continue
            name = ref_name(terms[0])
            if name in ("is_number", "is_string") and len(terms) == 2:
                facts[_canon(terms[1])] = "number" if name == "is_number" else "string"
            elif name in ("assign", "eq") and len(terms) == 3 and terms[1].get("type") == "var":
                facts.setdefault(_canon(terms[1]), ("=", terms[2]))
        return facts

    def _type(self, term: Any, facts: dict[str, Any], depth: int) -> str | None:
        if not isinstance(term, dict) or depth > 8:
            return None
        kind = term.get("type")
        if kind in ("number", "string"):
            return str(kind)
        fact = facts.get(_canon(term))
        if isinstance(fact, str):
            return fact
        if isinstance(fact, tuple):
            return self._type(fact[1], facts, depth + 1)
        if kind == "call":
            name = ref_name(term["value"][0])
            args = term["value"][1:]
            if name in _NUMBER_RESULT:
                return "number"
            if name in _STRING_RESULT:
                return "string"
            if name in ("plus", "minus", "mul", "div", "rem"):
                types = {self._type(a, facts, depth + 1) for a in args}
                return "number" if "number" in types else None  # `-` is also set difference
        return None


def ast_portability_issues(
    modules: Sequence[tuple[RegoModule, dict[str, Any]]],
) -> list[PortabilityIssue]:
    """Every construct in ``modules`` (each with OPA's AST of it) that would decide
    differently on the two engines."""
    return _Checker(modules).issues()
