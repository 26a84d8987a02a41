"""Compile errors OPA raises that the embedded engine accepts, found before the policy runs.

The fallback where OPA's own compiler is not installed (``vet``; with it, OPA's compiler
decides all of this, issue 30). rego-cpp compiles Rego v0 rule bodies, type errors and a few
other programs OPA's compiler refuses; such a policy then passes ``policy check`` but fails
to load on OPA (or, on the embedded engine, denies every call at run time). Checked here,
lexically (strings and comments blanked, like ``compat``):

``v1-syntax``       a rule body without ``if`` in any head form (``p = 1 {``, ``f(x) = y {``,
                    ``p[x] = y {``, ``p contains x {``, ``else = v {``)
``type-error``      a built-in called with the wrong number of arguments, or with a literal
                    (or a variable assigned a literal in the same rule) of a type it does not
                    take; arithmetic or ``==`` between literals of different types
``shadowed-root``   ``input :=`` / ``data :=`` (OPA: variables must not shadow input/data)
``redeclared-var``  the same variable assigned with ``:=`` twice in one body
``with-target``     ``with x as`` where x is not ``input``/``data`` or a function
``recursion``       a rule or function that depends on itself (rego-cpp compiles it)

What stays OPA's alone: type errors that need inference across rules, and unsafe variables.
``tests/oracle/test_check_parity.py`` runs a corpus of refused programs through both.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.policy.compat import RegoModule

__all__ = ["SIGNATURES", "StaticIssue", "static_issues"]

_NUM, _STR, _BOOL, _NULL = "number", "string", "boolean", "null"
_ARR, _OBJ, _SET = "array", "object", "set"
_ANY = frozenset({_NUM, _STR, _BOOL, _NULL, _ARR, _OBJ, _SET})
_COLL = frozenset({_ARR, _OBJ, _SET})
_N, _S, _A, _O = frozenset({_NUM}), frozenset({_STR}), frozenset({_ARR}), frozenset({_OBJ})
_AS = frozenset({_ARR, _SET})
_STRS = frozenset({_STR, _ARR, _SET})  # a string, or a collection of them

# Argument types of the built-ins the embedded engine accepts (portability.VERIFIED_BUILTINS).
SIGNATURES: dict[str, tuple[frozenset[str], ...]] = {
    "abs": (_N,),
    "array.concat": (_A, _A),
    "array.reverse": (_A,),
    "array.slice": (_A, _N, _N),
    "base64.decode": (_S,),
    "base64.encode": (_S,),
    "base64url.decode": (_S,),
    "base64url.encode": (_S,),
    "ceil": (_N,),
    "concat": (_S, _AS),
    "contains": (_S, _S),
    "count": (_COLL | _S,),
    "crypto.sha256": (_S,),
    "endswith": (_S, _S),
    "floor": (_N,),
    "glob.match": (_S, _A | {_NULL}, _S),
    "hex.decode": (_S,),
    "indexof": (_S, _S),
    "intersection": (frozenset({_SET}),),
    "is_array": (_ANY,),
    "is_boolean": (_ANY,),
    "is_null": (_ANY,),
    "is_number": (_ANY,),
    "is_object": (_ANY,),
    "is_string": (_ANY,),
    "json.unmarshal": (_S,),
    "max": (_AS,),
    "min": (_AS,),
    "numbers.range": (_N, _N),
    "object.filter": (_O, _COLL),
    "object.get": (_O, _ANY, _ANY),
    "object.keys": (_O,),
    "object.remove": (_O, _COLL),
    "product": (_AS,),
    "replace": (_S, _S, _S),
    "round": (_N,),
    "semver.compare": (_S, _S),
    "semver.is_valid": (_ANY,),
    "split": (_S, _S),
    "sprintf": (_S, _A),
    "startswith": (_S, _S),
    "strings.any_prefix_match": (_STRS, _STRS),
    "strings.any_suffix_match": (_STRS, _STRS),
    "strings.count": (_S, _S),
    "strings.replace_n": (_O, _S),
    "strings.reverse": (_S,),
    "substring": (_S, _N, _N),
    "sum": (_AS,),
    "time.add_date": (_N, _N, _N, _N),
    "time.clock": (_N | _A,),
    "time.date": (_N | _A,),
    "time.now_ns": (),
    "time.parse_duration_ns": (_S,),
    "time.weekday": (_N | _A,),
    "trim": (_S, _S),
    "trim_left": (_S, _S),
    "trim_prefix": (_S, _S),
    "trim_right": (_S, _S),
    "trim_space": (_S,),
    "trim_suffix": (_S, _S),
    "type_name": (_ANY,),
    "union": (frozenset({_SET}),),
    "units.parse_bytes": (_S,),
}


@dataclass(frozen=True)
class StaticIssue:
    file: str
    line: int
    rule: str
    message: str


# A rule or else head that opens a body without `if`: `{` right after a complete term.
_HEAD_LINE = re.compile(r"^(?:\}[ \t]*)?(?:default[ \t]+)?(?:else\b|[A-Za-z_])[^\n]*$", re.M)
_V0_OPEN = re.compile(r"[\w)\]\"]\s*\{\s*$|[\w)\]\"]\s*\{\s*[^}\n]*\}\s*$")
_V0_ELSE = re.compile(r"\belse\b(?:(?!\bif\b)[^\n{])*[\w)\]\"]\s*\{")
_SHADOW = re.compile(r"(?<![\w.])(input|data)\s*:=")
_DECLARE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*:=")
_WITH = re.compile(r"\bwith\s+([A-Za-z_][\w.]*)\s+as\b")
_LITERAL_ASSIGN = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*:=\s*([^\n;]+)")
_ARITH = re.compile(
    r"(\"[^\"\n]*\"|-?\d[\d.]*(?:[eE][-+]?\d+)?)\s*(\+|-|\*|/|%|==)\s*"
    r"(\"[^\"\n]*\"|-?\d[\d.]*(?:[eE][-+]?\d+)?)"
)


def _line(code: str, pos: int) -> int:
    return code.count("\n", 0, pos) + 1


def _literal_type(text: str, bound: dict[str, str]) -> str | None:
    """The type of a literal argument (or of a variable assigned one), None if not known."""
    text = text.strip()
    if not text:
        return None
    if text.startswith('"') and text.endswith('"') and text.count('"') == 2:
        return _STR
    if text.startswith("`") and text.endswith("`"):
        return _STR
    if re.fullmatch(r"-?\d[\d.]*(?:[eE][-+]?\d+)?", text):
        return _NUM
    if text in ("true", "false"):
        return _BOOL
    if text == "null":
        return _NULL
    if text.startswith("[") and text.endswith("]") and "|" not in text:
        return _ARR
    if text.startswith("{") and text.endswith("}") and "|" not in text:
        return _OBJ if (":" in text or text == "{}") else _SET
    if re.fullmatch(r"[A-Za-z_]\w*", text):
        return bound.get(text)
    return None


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call's argument text."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i])
            start = i + 1
    tail = text[start:]
    if tail.strip() or args:
        args.append(tail)
    return args


def _calls(body: str) -> list[tuple[int, str, str]]:
    """(offset, name, argument text) of every call to a built-in with a known signature."""
    found = []
    for match in re.finditer(r"(?<![\w.])([a-z_][\w]*(?:\.[a-z_]\w*)*)\s*\(", body):
        name = match.group(1)
        if name not in SIGNATURES:
            continue
        depth, i = 1, match.end()
        while i < len(body) and depth:
            depth += {"(": 1, ")": -1}.get(body[i], 0)
            i += 1
        if depth == 0:
            found.append((match.start(), name, body[match.end() : i - 1]))
    return found


def _chunks(code: str) -> list[tuple[int, str]]:
    starts = [m.start() for m in re.finditer(r"^[A-Za-z_]", code, re.M)] + [len(code)]
    return [(a, code[a:b]) for a, b in itertools.pairwise(starts)]


def static_issues(module: RegoModule, functions: set[str]) -> list[StaticIssue]:
    """Everything in ``module`` OPA's compiler refuses and rego-cpp accepts (see above).

    ``functions``: names of the policy's own functions (valid ``with`` targets)."""
    code, source, path = module.code, module.source, module.path
    issues: list[StaticIssue] = []

    def add(pos: int, rule: str, message: str) -> None:
        issues.append(StaticIssue(path, _line(code, pos), rule, message))

    for match in _HEAD_LINE.finditer(code):
        head = match.group(0)
        if head.startswith(("package", "import")) or re.search(r"\bif\b", head):
            continue
        value_open = re.search(r"(?::=|=)\s*\{", head)  # an object or set literal value
        if _V0_OPEN.search(head) and not value_open:
            add(match.start(), "v1-syntax", "a rule body needs `if` before it (OPA 1.0)")
    for match in _V0_ELSE.finditer(code):
        add(match.start(), "v1-syntax", "an else body needs `if` before it (OPA 1.0)")
    for match in _SHADOW.finditer(code):
        add(match.start(), "shadowed-root", f"a variable must not shadow {match.group(1)}")
    for match in _WITH.finditer(code):
        target = match.group(1)
        root = target.split(".")[0]
        if root not in ("input", "data") and target not in functions | set(SIGNATURES):
            add(
                match.start(),
                "with-target",
                f"`with {target}`: only input, data or a function can be replaced",
            )
    for offset, chunk in _chunks(code):
        bound: dict[str, str] = {}
        for match in _LITERAL_ASSIGN.finditer(chunk):
            kind = _literal_type(source[offset + match.start(2) : offset + match.end(2)], {})
            if kind:
                bound[match.group(1)] = kind
        _redeclared(chunk, offset, add)
        for at, name, args_text in _calls(chunk):
            args = _split_args(args_text)
            signature = SIGNATURES[name]
            if len(args) != len(signature):
                add(
                    offset + at,
                    "type-error",
                    f"{name}() takes {len(signature)} argument(s), got {len(args)}",
                )
                continue
            arg_start = offset + at + chunk[at:].index("(") + 1
            cursor = 0
            for index, (arg, allowed) in enumerate(zip(args, signature, strict=True)):
                begin = arg_start + cursor
                cursor += len(arg) + 1
                kind = _literal_type(source[begin : begin + len(arg)], bound)
                if kind and kind not in allowed:
                    add(
                        offset + at,
                        "type-error",
                        f"{name}() argument {index + 1} must be "
                        f"{' or '.join(sorted(allowed))}, not {kind}",
                    )
        for match in _ARITH.finditer(chunk):
            left = _literal_type(source[offset + match.start(1) : offset + match.end(1)], {})
            right = _literal_type(source[offset + match.start(3) : offset + match.end(3)], {})
            if left and right and left != right:
                add(
                    offset + match.start(),
                    "type-error",
                    f"`{match.group(2)}` between {left} and {right}",
                )
    issues += _recursion(code, path)
    return issues


def _recursion(code: str, path: str) -> list[StaticIssue]:
    """Cycles among the module's own rules and functions (by name, within the package)."""
    heads: dict[str, int] = {}
    uses: dict[str, set[str]] = {}
    for offset, chunk in _chunks(code):
        match = re.match(r"(?:default\s+)?([A-Za-z_]\w*)", chunk)
        if match is None or match.group(1) in ("package", "import"):
            continue
        name = match.group(1)
        heads.setdefault(name, offset)
        body = chunk[match.end() :]
        uses.setdefault(name, set()).update(re.findall(r"(?<![\w.])([A-Za-z_]\w*)", body))
    graph = {name: {u for u in refs if u in heads} for name, refs in uses.items()}
    issues, reported = [], set()
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and start not in reported:
                    reported.update(trail)
                    issues.append(
                        StaticIssue(
                            path,
                            _line(code, heads[start]),
                            "recursion",
                            f"{' -> '.join([*trail, start])} is recursive",
                        )
                    )
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    return issues


def _redeclared(chunk: str, offset: int, add: Callable[[int, str, str], None]) -> None:
    """``x := ...`` twice in the same brace group of one rule."""
    seen: dict[tuple[int, str], int] = {}
    group, stack = 0, [0]
    i = 0
    declarations = {m.start(): m.group(1) for m in _DECLARE.finditer(chunk) if m.group(1) != "else"}
    while i < len(chunk):
        ch = chunk[i]
        if ch in "{[":
            group += 1
            stack.append(group)
        elif ch in "}]" and len(stack) > 1:
            stack.pop()
        elif i in declarations and i > 0:
            key = (stack[-1], declarations[i])
            if key in seen:
                add(offset + i, "redeclared-var", f"{declarations[i]} is assigned with := twice")
            seen[key] = i
        i += 1
