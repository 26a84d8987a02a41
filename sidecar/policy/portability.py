"""What a policy may use so that it means the same on the embedded engine and on OPA.

rego-cpp (regopy 1.5) differs from OPA v1 in places that change decisions silently. Measured
against OPA's own Go engine (``tests/oracle/``), each difference is closed here by refusing the
construct at load, with a named rule, the file and line, and the fix:

``divergent-builtin``    a built-in whose results differ (``lower``/``upper`` on non-ASCII,
                         ``object.union`` not deep, ``sort`` of mixed types, ``sprintf`` verbs,
                         time parsing and formatting, ...), or one the semantics suite has not
                         verified: only :data:`VERIFIED_BUILTINS` are accepted.
``sprintf-format``       ``sprintf`` with a format that is not a literal of ``%v`` verbs (``%s``
                         of a non-string, ``%d``, ``%q``, ``%t``, widths all differ).
``not-undefined``        ``not`` over a call, operator or dynamic index whose operand is a
                         reference (``not f(input.x)``): OPA makes it undefined when the
                         reference is, rego-cpp makes it true (R1).
``untyped-comparison``   ``<``, ``>``, ``<=``, ``>=`` on a reference or variable whose type the
                         rule does not check (``is_number(x)``/``is_string(x)``): OPA orders
                         values across types (``"500" > 100``), rego-cpp is undefined (R3).

``%``, ``/``, non-integer ``+ - *`` (``divergent-arithmetic``) and number literals the engine
does not keep (``inexact-number``) are refused by ``arithmetic`` / ``ast_arithmetic`` (S12).

The rules are decided on OPA's AST where OPA's compiler is installed (``ast_portability``,
through ``vet``); the lexical scan here is the fallback. Numbers rego-cpp cannot compare
exactly are refused per call instead
(``sidecar/policy/_rego_input.py``, R2 and R4). The checks are lexical, like ``compat``: strings
and comments are blanked first, so they never trigger a rule.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.policy.compat import RegoModule, external_calls
from sidecar.policy.errors import PolicyLoadError

__all__ = [
    "DIVERGENT_BUILTINS",
    "VERIFIED_BUILTINS",
    "PortabilityError",
    "PortabilityIssue",
    "portability_issues",
]

# Built-ins whose results the semantics suite (tests/oracle/test_semantics.py) shows identical
# on both engines, edge cases included. Adding one here needs cases there.
VERIFIED_BUILTINS = frozenset(
    {
        "abs",
        "array.concat",
        "array.reverse",
        "array.slice",
        "base64.encode",
        "base64url.decode",
        "base64url.encode",
        "concat",
        "contains",
        "count",
        "crypto.sha256",
        "endswith",
        "glob.match",
        "hex.decode",
        "indexof",
        "intersection",
        "is_array",
        "is_boolean",
        "is_null",
        "is_number",
        "is_object",
        "is_string",
        "numbers.range",
        "object.filter",
        "object.get",
        "object.keys",
        "object.remove",
        "replace",
        "round",
        "semver.is_valid",
        "split",
        "sprintf",
        "startswith",
        "strings.any_prefix_match",
        "strings.any_suffix_match",
        "strings.count",
        "strings.replace_n",
        "strings.reverse",
        "substring",
        "sum",
        "time.add_date",
        "time.clock",
        "time.date",
        "time.now_ns",
        "time.weekday",
        "trim",
        "trim_left",
        "trim_prefix",
        "trim_right",
        "trim_suffix",
        "type_name",
        "union",
        "units.parse_bytes",
    }
)

# Built-ins the embedded engine has but that decide differently from OPA (each shown by a case
# in tests/oracle/test_semantics.py). Named here so the error says what differs.
DIVERGENT_BUILTINS = {
    "lower": 'lowercases ASCII only (lower("TİCKETS") keeps İ)',
    "upper": "uppercases ASCII only",
    "sort": "orders numbers and arrays wrongly (sort([3, 1.5, -2, 10]) is [-2, 1.5, 10, 3])",
    "format_int": "formats negative numbers as their magnitude",
    "hex.encode": 'sign-extends non-ASCII bytes ("é" becomes ffffffc3ffffffa9)',
    "json.marshal": "fails on some documents with non-ASCII strings",
    "object.union": "does not merge nested objects",
    "object.union_n": "does not merge nested objects",
    "is_set": "is undefined, not false, for a value that is not a set",
    "json.is_valid": "is undefined, not false, for invalid JSON",
    "regex.match": "treats \\w and other classes as ASCII only",
    "to_number": "turns integers beyond 64 bits into floats",
    "time.parse_rfc3339_ns": "fails on 'Z' with fractional seconds",
    "time.format": "always prints nanoseconds",
    "opa.runtime": "exposes the process environment",
    "net.cidr_contains": "is not implemented (errors at run time)",
    "http.send": "is not implemented (errors at run time)",
    # Issue 30: shown differing by tests/oracle/test_semantics.py, taken off the allow-list.
    "trim_space": 'trims ASCII spaces only (trim_space("\\u00a0a") keeps the no-break space)',
    "max": 'orders mixed types differently (max(["5", 10]) is 10, "5" on OPA)',
    "min": 'orders mixed types differently (min(["5", 10, [1]]) is "5", 10 on OPA)',
    "floor": "rounds -0.5 to -1 (OPA: 0) and large integers through a double",
    "ceil": "rounds -0.5 to 0 (OPA: 1)",
    "product": "rounds the result (product([0.1, 3]) is 0.3, 0.30000000000000004 on OPA)",
    "json.unmarshal": (
        "bypasses the input number checks and fails on \\u escapes and 1e400 "
        "(100.00000000000001 becomes 100)"
    ),
    "base64.decode": 'accepts missing padding (base64.decode("YQ") is "a", an error on OPA)',
    "semver.compare": "orders prereleases wrongly (1.0.0-alpha > 1.0.0)",
    "time.parse_duration_ns": 'drops all but the last unit of a negative duration ("-1m30s")',
}

_SPRINTF_VERB = re.compile(r"%(.)")
_NOT_EXPR = re.compile(r"\bnot\s+([^\n;]*)")
_OPERATOR = re.compile(r"\(|\[\s*[A-Za-z_]|!=|<|>|\+|(?<![\w.])-(?!\d)|\*|/|%|&|\||\bin\b")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?!\w)(\s*\()?")
_OPERAND = (
    r"(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]\n]*\])*(?:\([^()\n]*\))?"
    r"|-?\d[\d.]*(?:[eE][-+]?\d+)?|\"[^\"\n]*\")"
)
_COMPARISON = re.compile(rf"({_OPERAND})\s*(<=|>=|<|>)\s*({_OPERAND})")
_RULE_START = re.compile(r"^[A-Za-z_]", re.M)
_RULE_NAME = re.compile(r"^(?:default\s+)?([A-Za-z_]\w*)(\s*\()?", re.M)


@dataclass(frozen=True)
class PortabilityIssue:
    file: str
    line: int
    rule: str
    message: str
    builtin: str = ""  # for divergent-builtin: the built-in's name

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"


class PortabilityError(PolicyLoadError):
    """The policy uses a construct that decides differently on the embedded engine and OPA."""

    def __init__(self, issue: PortabilityIssue) -> None:
        way_out = "; rewrite it, or run this policy with `policy.engine: opa`"
        if "policy.engine: opa" in issue.message:
            way_out = ""  # the message names it already
        super().__init__(f"{issue}{way_out} (docs/policy-engines.md)")
        self.issue = issue


def portability_issues(modules: Iterable[RegoModule]) -> list[PortabilityIssue]:
    """Every construct in ``modules`` that would decide differently on the two engines."""
    modules = list(modules)
    issues = _builtin_issues(modules)
    for module in modules:
        issues += _sprintf_issues(module)
        issues += _not_issues(module)
        if not module.path.endswith("_test.rego"):
            issues += _comparison_issues(module)
    return sorted(issues, key=lambda i: (i.file, i.line, i.rule))


def _builtin_issues(modules: list[RegoModule]) -> list[PortabilityIssue]:
    issues = []
    for module, call, builtin in external_calls(modules):
        if not builtin:
            continue  # nothing can satisfy it: compat refuses it as unsupported
        if call.name in DIVERGENT_BUILTINS:
            why = f"which {DIVERGENT_BUILTINS[call.name]} on the embedded engine"
        elif call.name not in VERIFIED_BUILTINS:
            why = (
                "which is not among the built-ins verified to decide on the embedded engine "
                "as on OPA (docs/policy-engines.md lists them)"
            )
        else:
            continue
        issue = PortabilityIssue(module.path, call.line, "divergent-builtin", why, call.name)
        issues.append(issue)
    return issues


def _sprintf_issues(module: RegoModule) -> list[PortabilityIssue]:
    code, source = module.code, module.source
    issues = []
    for match in re.finditer(r"(?<![\w.])sprintf\s*\(\s*", code):
        start = match.end()
        line = code.count("\n", 0, start) + 1
        if not code.startswith('"', start):
            issues.append(
                PortabilityIssue(
                    module.path, line, "sprintf-format", "the format must be a string literal"
                )
            )
            continue
        end = code.index('"', start + 1)
        verbs = set(_SPRINTF_VERB.findall(source[start + 1 : end].replace("%%", "")))
        if verbs - {"v"}:
            bad = ", ".join(sorted(f"%{v}" for v in verbs - {"v"}))
            issues.append(
                PortabilityIssue(
                    module.path,
                    line,
                    "sprintf-format",
                    f"{bad} formats differently on the embedded engine; use %v",
                )
            )
    return issues


def _rule_names(module: RegoModule) -> set[str]:
    """Rules (not functions) the module defines: references that may be undefined."""
    names = set()
    for match in _RULE_NAME.finditer(module.code):
        if match.group(1) not in {"package", "import"} and not match.group(2):
            names.add(match.group(1))
    return names


def _not_issues(module: RegoModule) -> list[PortabilityIssue]:
    code = module.code
    references = {"input", "data"} | _rule_names(module) | set(module.imports())
    issues = []
    for match in _NOT_EXPR.finditer(code):
        expr = match.group(1).split(" with ")[0]
        text = module.source[match.start(1) : match.start(1) + len(expr)].strip()
        if not _OPERATOR.search(expr):
            continue
        names = {m.group(1) for m in _IDENT.finditer(expr) if not m.group(2)}
        found = sorted(names & references)
        if found:
            issues.append(
                PortabilityIssue(
                    module.path,
                    code.count("\n", 0, match.start()) + 1,
                    "not-undefined",
                    f"`not {text}` over {found[0]}: OPA is undefined when it is, the "
                    f"embedded engine true; bind it first (`v := {found[0]}...` then `not` over v)",
                )
            )
    return issues


def _bodies(code: str) -> list[tuple[int, str]]:
    """(offset, text) of each top-level rule, from its head to the next column-0 line."""
    starts = [m.start() for m in _RULE_START.finditer(code)] + [len(code)]
    return [(a, code[a:b]) for a, b in itertools.pairwise(starts)]


def _typed(operand: str, body: str) -> bool:
    if operand[0] in '"-0123456789' or operand.endswith(")"):
        return True  # a literal, or a call (built-ins return typed values)
    return any(f"{check}({operand})" in body for check in ("is_number", "is_string"))


def _comparison_issues(module: RegoModule) -> list[PortabilityIssue]:
    issues = []
    for offset, body in _bodies(module.code):
        if body.startswith(("package", "import")):
            continue
        for match in _COMPARISON.finditer(body):
            text = module.source[offset + match.start() : offset + match.end()]
            for operand in (match.group(1), match.group(3)):
                if not _typed(operand, body):
                    issues.append(
                        PortabilityIssue(
                            module.path,
                            module.code.count("\n", 0, offset + match.start()) + 1,
                            "untyped-comparison",
                            f"`{text}`: check the type of {operand} first "
                            f"(is_number({operand})); OPA orders values across types, the "
                            "embedded engine is undefined",
                        )
                    )
                    break
    return issues
