"""``set-order``: refuse, on OPA's AST, every place where a policy's own logic sees the order
in which a set (or an object the policy built) is iterated.

OPA iterates sets and objects in sorted order; rego-cpp in insertion order
(``[g | some g in {x | some x in input.groups}][0]`` is ``"Ops"`` on OPA and ``"support"``
embedded, and ``{"b", "a"}`` differs too). Objects that come from the input or data are made
exact instead: the sidecar hands them to rego-cpp with their keys sorted, as OPA holds them
(``_rego_input``, ``_rego``). What stays is order that a policy creates, refused here:

- an array comprehension whose body iterates a set, or an object built by the policy (a
  literal, a comprehension, a rule or function returning one), with ``some x in C``,
  ``C[x]`` or ``C[_]``;
- ``concat`` over a set (the joined string);
- a set passed to a function of the policy at a parameter that function iterates into an
  array.

Except one place the decision contract makes unordered: an array comprehension that is
directly the value of ``reasons``, ``redact``, ``redact_response`` or ``scopes`` in an object
literal in a rule's value (the sidecar sorts those lists when it parses the decision), unless
a policy indexes that list again by name (``rule.reasons[0]`` is refused).

Set-ness is inferred from the AST, without OPA's type checker: set literals and
comprehensions, ``contains`` rules, ``| & -`` on a set, ``union``, ``intersection``,
``object.keys``, variables assigned from these, a collection literal holding one (``some s in
[S]``), and rules and functions whose value is one, across every module of a package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.policy.ast_portability import ref_name
from sidecar.policy.compat import RegoModule
from sidecar.policy.portability import PortabilityIssue

__all__ = ["UNORDERED_KEYS", "set_order_issues"]

# Lists the decision contract treats as unordered: ``parse_decision`` sorts them.
UNORDERED_KEYS = frozenset({"reasons", "redact", "redact_response", "scopes"})
_SET_CALLS = frozenset({"union", "intersection", "object.keys"})
_SET_OPS = frozenset({"or", "and", "minus"})  # `|`, `&`, `-`: sets when an operand is
_ORDERED_AGGREGATES = {"concat": 1}  # argument index whose order shows
_MEMBER = frozenset({"internal.member_2", "internal.member_3"})
_MESSAGE = (
    "{what}: OPA iterates sets and objects in sorted order, the embedded engine in insertion "
    "order, so {why}; keep it a set (`count`, `in`, set operations), or build the list from "
    "an array"
)


def _canon(term: Any) -> str:
    return json.dumps(term, sort_keys=True)


@dataclass
class _Kinds:
    """What each rule and function of each package returns: ``set``, ``object`` or nothing
    known; and which parameters each function iterates into an array."""

    rules: dict[str, dict[str, str]] = field(default_factory=dict)  # package -> rule -> kind
    iterated_params: dict[tuple[str, str], set[int]] = field(default_factory=dict)


@dataclass
class _Mod:
    module: RegoModule
    ast: dict[str, Any]
    package: str
    aliases: dict[str, str]  # import alias -> package path


class _SetOrder:
    def __init__(self, modules: Sequence[tuple[RegoModule, dict[str, Any]]]) -> None:
        self.mods: list[_Mod] = []
        for module, ast in modules:
            path = ast.get("package", {}).get("path", [])[1:]
            package = ".".join(p.get("value", "") for p in path)
            aliases = {}
            for imp in ast.get("imports") or []:
                parts = imp.get("path", {}).get("value", [])
                names = [p.get("value", "") for p in parts]
                if names and names[0] == "data":
                    alias = imp.get("alias") or names[-1]
                    aliases[alias] = ".".join(names[1:])
            self.mods.append(_Mod(module, ast, package, aliases))
        self.kinds = _Kinds()
        self._rule_names: dict[str, set[str]] = {}
        for _ in range(8):  # rules returning rules returning sets: to a fixed point
            if not self._infer_rules():
                break
        self._infer_iterated_params()

    # -- kinds ----------------------------------------------------------------------------

    def _rule_kind(self, mod: _Mod, term: Any) -> str | None:
        """The kind of a rule named by ``term`` (a bare name, ``data.pkg.rule``, an alias)."""
        if not isinstance(term, dict):
            return None
        if term.get("type") == "var":
            return self.kinds.rules.get(mod.package, {}).get(term.get("value", ""))
        name = ref_name(term)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        if head == "data":
            package, _, rule = rest.rpartition(".")
        elif head in mod.aliases:
            package, rule = mod.aliases[head], rest
            if "." in rule:
                sub, _, rule = rule.rpartition(".")
                package = f"{package}.{sub}"
        else:
            package, rule = mod.package, name
        return self.kinds.rules.get(package, {}).get(rule)

    def kind(self, mod: _Mod, term: Any, facts: dict[str, Any], depth: int = 0) -> str | None:
        """``set``, ``object`` (built by the policy) or None (an array, a scalar, input, data,
        or not known)."""
        if not isinstance(term, dict) or depth > 12:
            return None
        kind = term.get("type")
        if kind in ("set", "setcomprehension"):
            return "set"
        if kind in ("object", "objectcomprehension"):
            return "object"
        if kind == "member-of":  # x of `some x in C`: a set when C's literal holds sets
            value = term["value"]
            members = value.get("value") if isinstance(value, dict) else None
            if value.get("type") in ("array", "set") and isinstance(members, list):
                return "set" if any(self._holds_set(mod, m, facts) for m in members) else None
            return None
        fact = facts.get(_canon(term))
        if fact is not None:
            return self.kind(mod, fact, facts, depth + 1)
        if kind in ("var", "ref"):
            return self._rule_kind(mod, term)
        if kind == "call":
            name = ref_name(term["value"][0])
            args = term["value"][1:]
            if name in _SET_CALLS:
                return "set"
            if name in _SET_OPS and any(self.kind(mod, a, facts, depth + 1) == "set" for a in args):
                return "set"
            return self._rule_kind(mod, term["value"][0])  # a function of the policy
        return None

    def _holds_set(self, mod: _Mod, term: Any, facts: dict[str, Any]) -> bool:
        """A set, or an array/object/set literal with a set among its members."""
        if self.kind(mod, term, facts) == "set":
            return True
        if isinstance(term, dict) and term.get("type") in ("array", "set"):
            return any(self._holds_set(mod, t, facts) for t in term.get("value") or [])
        if isinstance(term, dict) and term.get("type") == "object":
            return any(self._holds_set(mod, v, facts) for _, v in term.get("value") or [])
        return False

    def _infer_rules(self) -> bool:
        changed = False
        for mod in self.mods:
            table = self.kinds.rules.setdefault(mod.package, {})
            for rule in mod.ast.get("rules") or []:
                head = rule.get("head", {})
                ref = head.get("ref") or []
                if not ref or ref[0].get("type") != "var" or len(ref) > 1:
                    continue
                name = ref[0]["value"]
                if "key" in head and "value" not in head:
                    kind: str | None = "set"  # `contains`
                elif "key" in head:
                    kind = "object"  # a partial object rule
                else:
                    facts = _facts(rule.get("body") or [])
                    kind = self.kind(mod, head.get("value"), facts)
                if kind and table.get(name) != kind:
                    table[name] = kind
                    changed = True
        return changed

    def _infer_iterated_params(self) -> None:
        for mod in self.mods:
            for rule in mod.ast.get("rules") or []:
                head = rule.get("head", {})
                params = head.get("args")
                if not params:
                    continue
                name = head.get("name") or (head.get("ref") or [{}])[0].get("value", "")
                found = self.kinds.iterated_params.setdefault((mod.package, name), set())
                for comp in _array_comprehensions(rule):
                    for collection in _iterated(comp["body"]):
                        for i, param in enumerate(params):
                            if _canon(param) == _canon(collection):
                                found.add(i)

    # -- findings -------------------------------------------------------------------------

    def issues(self) -> list[PortabilityIssue]:
        out: list[PortabilityIssue] = []
        for mod in self.mods:
            if mod.module.path.endswith("_test.rego"):
                continue
            for rule in mod.ast.get("rules") or []:
                exempt = {id(c) for c in _unordered_slots(rule.get("head", {}).get("value"))}
                out += self._rule_issues(mod, rule, exempt)
        return out

    def _issue(self, mod: _Mod, what: str, why: str, needle: str) -> PortabilityIssue:
        line = _line(mod.module, needle)
        message = _MESSAGE.format(what=what, why=why)
        return PortabilityIssue(mod.module.path, line, "set-order", message)

    def _rule_issues(self, mod: _Mod, rule: Any, exempt: set[int]) -> list[PortabilityIssue]:
        out = []
        rule_facts = _facts(rule.get("body") or [])
        for comp, facts in _array_comprehensions_with_facts(rule, rule_facts):
            if id(comp) in exempt:
                continue
            local = {**facts, **_facts(comp["body"])}
            for collection in _iterated(comp["body"]):
                if (
                    self._holds_set(mod, collection, local)
                    or self.kind(mod, collection, local) == "object"
                ):
                    name = collection.get("value") if collection.get("type") == "var" else None
                    out.append(
                        self._issue(
                            mod,
                            "an array built by iterating a set or an object the policy built",
                            "its order (and `[0]`, `concat`, `==` on it) differs",
                            f"in {name}"
                            if isinstance(name, str)
                            else (ref_name(collection) or "|"),
                        )
                    )
                    break
        for call, facts in _calls_with_facts(rule, rule_facts):
            name = ref_name(call[0])
            args = call[1:]
            index = _ORDERED_AGGREGATES.get(name or "")
            if index is not None and len(args) > index:
                if self.kind(mod, args[index], facts) == "set":
                    out.append(
                        self._issue(mod, f"`{name}` over a set", "the result differs", f"{name}(")
                    )
                continue
            iterated = self._function_params(mod, call[0])
            for i in iterated:
                if i < len(args) and self._holds_set(mod, args[i], facts):
                    out.append(
                        self._issue(
                            mod,
                            f"a set passed to `{name}`, which iterates it into an array",
                            "that array's order differs",
                            f"{(name or '').rsplit('.', 1)[-1]}(",
                        )
                    )
        for ref in _refs(rule):
            if self._indexes_unordered_slot(mod, ref):
                out.append(
                    self._issue(
                        mod,
                        "an unordered decision list indexed by position",
                        "its order differs (it is sorted only when the sidecar parses the "
                        "decision)",
                        ".",
                    )
                )
        return out

    def _function_params(self, mod: _Mod, fn: Any) -> set[int]:
        if isinstance(fn, dict) and fn.get("type") == "ref" and len(fn["value"]) == 1:
            return self.kinds.iterated_params.get((mod.package, fn["value"][0]["value"]), set())
        name = ref_name(fn) or ""
        head, _, rest = name.partition(".")
        if head == "data":
            package, _, rule = rest.rpartition(".")
            return self.kinds.iterated_params.get((package, rule), set())
        if head in mod.aliases:
            return self.kinds.iterated_params.get((mod.aliases[head], rest), set())
        return set()

    def _indexes_unordered_slot(self, mod: _Mod, ref: Any) -> bool:
        """``rule.reasons[i]``: a rule of the policy, then an unordered key, then more."""
        parts = ref["value"]
        if not parts or parts[0].get("type") != "var":
            return False
        head = parts[0]["value"]
        if not (head == "data" or head in mod.aliases or head in self._package_rules(mod)):
            return False
        for i, part in enumerate(parts[1:-1], start=1):
            if part.get("type") == "string" and part.get("value") in UNORDERED_KEYS:
                return i + 1 < len(parts)
        return False

    def _package_rules(self, mod: _Mod) -> set[str]:
        if mod.package not in self._rule_names:
            names: set[str] = set()
            for other in self.mods:
                if other.package == mod.package:
                    for rule in other.ast.get("rules") or []:
                        ref = rule.get("head", {}).get("ref") or []
                        if ref and ref[0].get("type") == "var":
                            names.add(ref[0]["value"])
            self._rule_names[mod.package] = names
        return self._rule_names[mod.package]


# -- AST walking ------------------------------------------------------------------------------


def _facts(body: list[Any]) -> dict[str, Any]:
    """``v := term`` / ``v = term`` of one body (by the variable), and ``some v in C`` /
    ``v := C[_]`` (v's kind is then C's member's: a set when C holds sets)."""
    facts: dict[str, Any] = {}
    for args in _member_calls(body):
        if len(args) >= 2 and isinstance(args[-2], dict) and args[-2].get("type") == "var":
            facts.setdefault(_canon(args[-2]), {"type": "member-of", "value": args[-1]})
    for expr in body:
        terms = expr.get("terms") if isinstance(expr, dict) else None
        if isinstance(terms, list) and len(terms) == 3:
            name = ref_name(terms[0])
            if name in ("assign", "eq") and terms[1].get("type") == "var":
                facts.setdefault(_canon(terms[1]), terms[2])
    return facts


def _member_calls(node: Any) -> Iterator[list[Any]]:
    """``internal.member_2/3`` calls (``x in C``, ``some x in C``) directly in ``node``, not
    inside nested comprehensions."""
    if isinstance(node, dict):
        if node.get("type") in ("arraycomprehension", "setcomprehension", "objectcomprehension"):
            return
        terms = node.get("terms")
        if isinstance(terms, list) and terms and ref_name(terms[0]) in _MEMBER:
            yield terms[1:]
        if node.get("type") == "call" and ref_name(node["value"][0]) in _MEMBER:
            yield node["value"][1:]
        for value in node.values():
            yield from _member_calls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _member_calls(item)


def _iterated(body: list[Any]) -> Iterator[Any]:
    """Every collection ``body`` iterates: ``some x in C`` (C), ``C[x]`` / ``C[_]`` refs
    with a variable index (the ref's prefix)."""
    for args in _member_calls(body):
        if args:
            yield args[-1]
    for ref in _refs(body, nested=False):
        parts = ref["value"]
        for i, part in enumerate(parts[1:], start=1):
            if part.get("type") == "var":
                prefix = parts[:i]
                yield prefix[0] if len(prefix) == 1 else {"type": "ref", "value": prefix}
                break


def _refs(node: Any, *, nested: bool = True) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if not nested and node.get("type") in (
            "arraycomprehension",
            "setcomprehension",
            "objectcomprehension",
        ):
            return
        if node.get("type") == "ref" and isinstance(node.get("value"), list):
            yield node
        for value in node.values():
            yield from _refs(value, nested=nested)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item, nested=nested)


def _array_comprehensions(node: Any) -> Iterator[dict[str, Any]]:
    for comp, _ in _array_comprehensions_with_facts(node, {}):
        yield comp


def _array_comprehensions_with_facts(
    node: Any, facts: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every array comprehension's value (``{"term", "body"}``) under ``node`` with the
    assignments of the bodies around it."""
    if isinstance(node, dict):
        if node.get("type") == "arraycomprehension":
            yield node["value"], facts
        body = node.get("body")
        if isinstance(body, list):
            facts = {**facts, **_facts(body)}
        for value in node.values():
            yield from _array_comprehensions_with_facts(value, facts)
    elif isinstance(node, list):
        for item in node:
            yield from _array_comprehensions_with_facts(item, facts)


def _calls_with_facts(
    node: Any, facts: dict[str, Any]
) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    if isinstance(node, dict):
        body = node.get("body")
        if isinstance(body, list):
            facts = {**facts, **_facts(body)}
        terms = node.get("terms")
        if "index" in node and isinstance(terms, list) and terms:
            yield terms, facts
        if node.get("type") == "call" and isinstance(node.get("value"), list):
            yield node["value"], facts
        for value in node.values():
            yield from _calls_with_facts(value, facts)
    elif isinstance(node, list):
        for item in node:
            yield from _calls_with_facts(item, facts)


def _unordered_slots(value: Any) -> Iterator[dict[str, Any]]:
    """Array comprehensions that are directly the value of an unordered key in an object
    literal of a rule's value (through nested object literals only)."""
    if not isinstance(value, dict) or value.get("type") != "object":
        return
    for key, item in value.get("value") or []:
        if not isinstance(item, dict):
            continue
        if (
            item.get("type") == "arraycomprehension"
            and key.get("type") == "string"
            and key.get("value") in UNORDERED_KEYS
        ):
            yield item["value"]
        yield from _unordered_slots(item)


def _line(module: RegoModule, needle: str) -> int:
    """A line for the message: the first line holding a comprehension/call like it (the AST
    has no positions; the finding never depends on it)."""
    code = module.code
    at = code.find(needle)
    return code.count("\n", 0, at) + 1 if at >= 0 else 0


def set_order_issues(
    modules: Sequence[tuple[RegoModule, dict[str, Any]]],
) -> list[PortabilityIssue]:
    """Every place in ``modules`` (each with OPA's AST) where a set's iteration order would
    reach the policy's logic."""
    return _SetOrder(modules).issues()
