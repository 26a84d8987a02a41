"""Arithmetic and number literals that decide differently on the embedded engine (S12).

Measured against OPA's Go engine (``tests/oracle/test_s12_arith.py``):

* ``%`` (OPA's ``rem``): rego-cpp computes a wrong remainder whenever the quotient has a zero
  digit (``70 % 7`` is 2, OPA 0; ``32 % 3`` is 0, OPA 2), from literals and from the input
  alike. Refused wherever it appears; ``a - b * floor(a / b)`` is no way out (``floor`` and
  ``/`` differ too).
* ``/``: rego-cpp keeps the quotient at about 16 significant digits, OPA the exact double
  (``-999391 / 13 * 13 == -999391`` is true embedded, false on OPA). Refused.
* ``+ - *`` on a number that is not an integer: rounded the same way
  (``-7175.3 - 43.67 == -7218.97`` is true embedded, false on OPA; on input floats about 40% of
  results compared with their 15-digit value differ). On integers they are exact. Refused
  (with ``sum``) unless every operand is proven an integer a double holds
  (``ast_arithmetic``), e.g. checked in the same body (``x == round(x)``
  and ``abs(x) <= 9007199254740992``; an integral float beyond 2^53, ``1e200``, is
  multiplied wrongly).
* A number literal (or a number in a data document) with more than 15 significant digits, or
  outside 1e-307..1e308 in magnitude, or an integer beyond 64 bits: rego-cpp does not keep it
  (``1.0000000000000002 > 1`` is undefined embedded, true on OPA; ``1e309`` is an error).
  Refused, as the same numbers in the input are refused per call (``_rego_input``).

The number-literal scan is lexical on both checking paths (literals are unambiguous in the
blanked text); the operator rules run on OPA's AST (``ast_arithmetic``) where OPA's compiler is
available, lexically here otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from sidecar.policy.compat import RegoModule
from sidecar.policy.portability import PortabilityIssue

__all__ = [
    "DIVISION",
    "FLOAT_ARITHMETIC",
    "REMAINDER",
    "data_number_issues",
    "lexical_arithmetic_issues",
    "literal_issues",
]

REMAINDER = (
    "`%` computes a wrong remainder on the embedded engine whenever the quotient has a zero "
    "digit (`70 % 7` is 2 there, 0 on OPA; `30 % 3` is 1), and a rewrite with `floor` and "
    "`/` is no way out (they differ too): run this policy with `policy.engine: opa`"
)
DIVISION = (
    "`/` keeps about 16 significant digits of the quotient on the embedded engine, OPA the "
    "exact value (`-999391 / 13 * 13 == -999391` is true there, false on OPA): run this "
    "policy with `policy.engine: opa`"
)
FLOAT_ARITHMETIC = (
    "`{sym}` on a number that may not be an integer ({why}): the embedded engine rounds the "
    "result to about 16 significant digits, OPA does not (`-7175.3 - 43.67 == -7218.97` is "
    "true there, false on OPA); on integers it is exact, so prove the operand one a double "
    "holds in the same body: `x == round(x)` and `abs(x) <= 9007199254740992` (an integer "
    "from the input needs it too: `x := input.n`, both checks, then `x + 1`), or run this "
    "policy with `policy.engine: opa`"
)
RULE = "divergent-arithmetic"
LITERAL_RULE = "inexact-number"

_DIGITS = 15  # significant digits rego-cpp keeps exactly (as for input floats)
_FLOAT_MIN, _FLOAT_MAX = Decimal("1e-307"), Decimal("1e308")
_INT_MAX = 2**63 - 1
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
_OPERAND = (
    r"(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]\n]*\])*(?:\([^()\n]*\))?"
    r"|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
)
_GUARDED = " guarded"  # no name: the names checked to be integers a double holds
_AGGREGATE = re.compile(r"(?<![\w.])(sum)\(")  # `product`: a divergent built-in already
_DEFINITION = re.compile(r"(?m)^\s*([A-Za-z_]\w*)\b[^\n:=]*?(?::=|=)([^\n]*)")
_ARITH = re.compile(rf"({_OPERAND})\s*([-+*])(?!=)(?=\s*({_OPERAND}))")


def _line(code: str, offset: int) -> int:
    return code.count("\n", 0, offset) + 1


def number_problem(text: str) -> str:
    """Why the embedded engine does not keep the number literal ``text`` ("" if it does)."""
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return ""
    if not value.is_finite():
        return "it is not a finite number"
    digits = value.as_tuple().digits
    significant = "".join(map(str, digits)).strip("0")
    if "." not in text and "e" not in text.lower():
        fits = value.adjusted() < 19 and abs(value) <= _INT_MAX
        return "" if fits else "it is an integer beyond 64 bits"
    # the exponent first: abs() of 1e99999999 overflows Decimal's context
    if significant and (
        not -308 <= value.adjusted() <= 308 or not _FLOAT_MIN <= abs(value) <= _FLOAT_MAX
    ):
        return "it is outside 1e-307..1e308 in magnitude (an error or another number there)"
    if len(significant) > _DIGITS:
        return (
            f"it has {len(significant)} significant digits and the embedded engine keeps "
            f"{_DIGITS} (`1.0000000000000002 > 1` is undefined there, true on OPA)"
        )
    return ""


def literal_issues(module: RegoModule) -> list[PortabilityIssue]:
    """Number literals of ``module`` the embedded engine would not keep."""
    code = module.code
    issues = []
    for match in _NUMBER.finditer(code):
        why = number_problem(match.group())
        if why:
            issues.append(
                PortabilityIssue(
                    module.path,
                    _line(code, match.start()),
                    LITERAL_RULE,
                    f"the number {match.group()}: {why}; write at most {_DIGITS} significant "
                    "digits, or run this policy with `policy.engine: opa`",
                )
            )
    return issues


def lexical_arithmetic_issues(
    module: RegoModule, data: Mapping[str, Any] | None = None
) -> list[PortabilityIssue]:
    """``%`` and ``/`` anywhere; ``+ - *`` and ``sum`` on an input reference, a
    float literal, ``data`` holding a non-integer, or a name the module defines (one level:
    ``a := ...``, ``f(x) := ...``) whose definition holds one of those. The fallback without
    OPA's AST: deeper chains and comprehension variables are NOT traced, and a guard
    (``x == round(x)``, ``abs(x) <= 2^53``) counts wherever the module writes it (the warning
    says so)."""
    code = module.code
    defs = _definitions(code)
    data = data or {}
    issues = []
    for match in re.finditer(r"[%/]", code):
        message = REMAINDER if match.group() == "%" else DIVISION
        issues.append(PortabilityIssue(module.path, _line(code, match.start()), RULE, message))
    for match in _ARITH.finditer(code):
        for operand in (match.group(1), match.group(3)):
            why = _lexical_why(operand, defs, data)
            if why:
                message = FLOAT_ARITHMETIC.format(sym=match.group(2), why=why)
                issues.append(
                    PortabilityIssue(module.path, _line(code, match.start()), RULE, message)
                )
                break
    for match in _AGGREGATE.finditer(code):
        why = _text_why(_parenthesised(code, match.end()), defs, data, nested=True)
        if why:
            message = FLOAT_ARITHMETIC.format(sym=f"{match.group(1)}()", why=why)
            issues.append(PortabilityIssue(module.path, _line(code, match.start()), RULE, message))
    return issues


def _lexical_why(operand: str, defs: dict[str, list[str]], data: Mapping[str, Any]) -> str:
    if re.fullmatch(r"input\b.*", operand) and not operand.endswith(")"):
        return f"{operand} comes from the input"
    if operand[0].isdigit() and ("." in operand or "e" in operand.lower()):
        return f"the float literal {operand}"
    if operand.startswith("data."):
        return _data_why(operand, data)
    name = re.match(r"\w+", operand)
    if name and name.group() in defs.get(_GUARDED, []):
        return ""  # `x == round(x)` and `abs(x) <= 2^53` written in the module
    for text in defs.get(name.group() if name else "", []):
        why = _text_why(text, defs, data, nested=False)
        if why:
            return f"{operand}: {why}"
    return ""


def _text_why(text: str, defs: dict[str, list[str]], data: Mapping[str, Any], nested: bool) -> str:
    """Why ``text`` (a definition or an aggregate's argument) may hold a non-integer."""
    for match in re.finditer(r"(?<![\w.])(?:input|data)(?:\.\w+)*", text):
        if match.group().startswith("data."):
            why = _data_why(match.group(), data)
            if why:
                return why
        elif not text[match.end() :].startswith(")"):
            return f"{match.group()} comes from the input"
    for match in _NUMBER.finditer(text):
        if "." in match.group() or "e" in match.group().lower():
            return f"the float literal {match.group()}"
    if nested:  # an aggregate's argument: the names it holds, one level
        for match in re.finditer(r"(?<![\w.])[A-Za-z_]\w*", text):
            for definition in defs.get(match.group(), []):
                why = _text_why(definition, defs, data, nested=False)
                if why:
                    return f"{match.group()}: {why}"
    return ""


def _data_why(ref: str, data: Mapping[str, Any]) -> str:
    node: Any = data
    for key in ref.split(".")[1:]:
        if not isinstance(node, Mapping) or key not in node:
            return ""  # a rule of a package, or undefined: not traced lexically
        node = node[key]
    return "" if _all_integers(node) else f"{ref} holds a number that is not an integer"


def _all_integers(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_all_integers(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_integers(v) for v in value)
    if isinstance(value, float):
        return False
    return not isinstance(value, int) or isinstance(value, bool) or abs(value) <= 2**53


def _definitions(code: str) -> dict[str, list[str]]:
    """name -> the text of each of its definitions (to the end of the line)."""
    out: dict[str, list[str]] = {}
    for match in _DEFINITION.finditer(code):
        out.setdefault(match.group(1), []).append(match.group(2))
    rounded = set(re.findall(r"(?<![\w.])(\w+)\s*==\s*round\(\s*\1\s*\)", code))
    rounded |= set(re.findall(r"round\(\s*(\w+)\s*\)\s*==\s*\1(?![\w.\[])", code))
    bounded = {
        name
        for name, limit in re.findall(r"abs\(\s*(\w+)\s*\)\s*<=?\s*(\d+)(?![\w.])", code)
        if int(limit) <= 2**53
    }
    out[_GUARDED] = sorted(rounded & bounded)
    return out


def _parenthesised(code: str, start: int) -> str:
    """The text from ``start`` (just after ``(``) to its closing parenthesis."""
    depth = 1
    for index in range(start, len(code)):
        depth += {"(": 1, ")": -1}.get(code[index], 0)
        if depth == 0:
            return code[start:index]
    return code[start:]


def data_number_issues(data: Any, file: str = "data") -> list[PortabilityIssue]:
    """Numbers in the data documents the embedded engine would not keep (read from JSON,
    so a float is judged by the double it became)."""
    issues: list[PortabilityIssue] = []
    _walk_data(data, "data", file, issues)
    return issues


def _walk_data(value: Any, path: str, file: str, issues: list[PortabilityIssue]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk_data(item, f"{path}.{key}", file, issues)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk_data(item, f"{path}[{index}]", file, issues)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return
    else:
        why = _data_number_why(value)
        if why:
            issues.append(
                PortabilityIssue(
                    file,
                    0,
                    LITERAL_RULE,
                    f"{path} is a number the embedded engine does not keep ({why}); store at "
                    f"most {_DIGITS} significant digits, or run this policy with "
                    "`policy.engine: opa`",
                )
            )


def _data_number_why(value: float) -> str:
    if isinstance(value, int):
        return "" if abs(value) <= _INT_MAX else "an integer beyond 64 bits"
    if not math.isfinite(value):
        return "not finite"
    magnitude = abs(value)
    if magnitude and not 1e-307 <= magnitude <= 1e308:
        return "outside 1e-307..1e308 in magnitude"
    if float(format(value, f".{_DIGITS}g")) != value:
        return f"more than {_DIGITS} significant digits"
    return ""
