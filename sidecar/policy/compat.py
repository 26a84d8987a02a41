"""What the embedded engine (rego-cpp) can run, checked before it runs.

Find every function a Rego module calls, so the embedded engine can refuse what it lacks, and
the ``with`` forms on which rego-cpp 1.5 crashes or silently evaluates wrongly.

rego-cpp answers a call to a built-in it does not implement with an error (or, for a few, an
undefined result) only when that line is evaluated, which can be months after rollout. Scanning
the source at load time turns that into an error naming the built-in, the file and the line.

This is a lexical scan, not a parser: strings and comments are blanked first (keeping line
numbers), then every ``name(`` / ``a.b.c(`` is a call unless it is a keyword, a rule head at
column 0 followed by ``:=``/``=``/``if``/a body (a function definition), or a reference into
``data`` (a policy-defined function).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar.policy.errors import PolicyLoadError, UnsupportedBuiltinError

__all__ = [
    "Call",
    "RegoModule",
    "check_builtins",
    "external_calls",
    "find_calls",
    "risky_with_forms",
]

_KEYWORDS = frozenset(
    {"not", "some", "every", "in", "if", "else", "with", "as", "default", "import", "package"}
)
_CALL = re.compile(r"(?<![\w.\]\)\"'`])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")
_DEF = re.compile(r"^(?:default\s+)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(", re.MULTILINE)
_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_IMPORT = re.compile(r"^import\s+(data(?:\.[A-Za-z_]\w*)+)(?:\s+as\s+([A-Za-z_]\w*))?", re.M)


@dataclass(frozen=True)
class Call:
    name: str
    line: int


@dataclass(frozen=True)
class RegoModule:
    """One Rego file, blanked of strings and comments for scanning."""

    path: str
    source: str

    @property
    def code(self) -> str:
        return _blank(self.source)

    @property
    def package(self) -> str:
        match = _PACKAGE.search(self.code)
        if match is None:
            raise PolicyLoadError(f"{self.path}: no package declaration")
        return match.group(1)

    def imports(self) -> dict[str, str]:
        """Alias -> full data path for every ``import data...`` line."""
        out = {}
        for full, alias in _IMPORT.findall(self.code):
            out[alias or full.rsplit(".", 1)[1]] = full
        return out

    def defined_functions(self) -> set[str]:
        return set(_DEF.findall(self.code))


def _blank(source: str) -> str:
    """Replace string literals and comments with spaces, keeping newlines and offsets."""
    out = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "#":
            end = source.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
        elif ch == '"':
            j = i + 1
            while j < n and source[j] != '"' and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            out.append('"' + " " * (min(j, n) - i - 1) + ('"' if j < n else ""))
            i = j + 1
        elif ch == "`":
            end = source.find("`", i + 1)
            end = n - 1 if end == -1 else end
            out.append("`" + re.sub(r"[^\n]", " ", source[i + 1 : end]) + "`")
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)[:n]


def find_calls(module: RegoModule) -> list[Call]:
    """Every call site in ``module`` that is not a function definition or keyword."""
    code = module.code
    calls = []
    for match in _CALL.finditer(code):
        name = match.group(1)
        if name in _KEYWORDS:
            continue
        line_start = code.rfind("\n", 0, match.start()) + 1
        at_head = line_start == match.start() or code[line_start : match.start()] == "default "
        if at_head and _is_definition(code, match.end()):
            continue  # a rule head: `f(x) := ...` defines f
        calls.append(Call(name=name, line=code.count("\n", 0, match.start()) + 1))
    return calls


_HEAD_TAIL = re.compile(r"\s*(?::=|=|if\b|\{|contains\b|else\b)")


def _is_definition(code: str, after_paren: int) -> bool:
    """A column-0 ``f(...)`` defines f when its closing paren is followed by ``:=``, ``=``,
    ``if`` or a body; otherwise it is a call (e.g. a body line that starts at column 0)."""
    depth, i = 1, after_paren
    while i < len(code) and depth:
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        i += 1
    return depth == 0 and _HEAD_TAIL.match(code, i) is not None


def external_calls(modules: Iterable[RegoModule]) -> list[tuple[RegoModule, Call, bool]]:
    """``(module, call, builtin)`` for every call not to a function the policy defines;
    ``builtin`` is False for a call into ``data`` or an import (which nothing can satisfy)."""
    modules = list(modules)
    functions: set[str] = set()  # fully qualified: data.pkg.f
    for module in modules:
        functions.update(f"data.{module.package}.{f}" for f in module.defined_functions())
    out = []
    for module in modules:
        package = module.package
        imports = module.imports()
        for call in find_calls(module):
            head, _, rest = call.name.partition(".")
            if head == "data":
                qualified = call.name
            elif head in imports:
                qualified = imports[head] + ("." + rest if rest else "")
            else:
                qualified = f"data.{package}.{call.name}"
            if qualified not in functions:
                out.append((module, call, head != "data" and head not in imports))
    return out


def check_builtins(modules: Iterable[RegoModule], is_builtin: Callable[[str], bool]) -> None:
    """Raise :class:`UnsupportedBuiltinError` for the first call that nothing can satisfy."""
    for module, call, builtin in external_calls(modules):
        if not builtin or not is_builtin(call.name):
            raise UnsupportedBuiltinError(call.name, module.path, call.line)


_WITH = re.compile(
    r"\bwith\s+(input|data(?:\.[A-Za-z_]\w*)+|input(?:\.[A-Za-z_]\w*)+)\s+as\s+([^\n]*)"
)


def risky_with_forms(module: RegoModule) -> list[tuple[int, str]]:
    """``(line, why)`` for each ``with`` that rego-cpp 1.5 mishandles.

    A whole-document ``with input as ...`` crashes it when the policy calls functions or
    uses helper rules; a ``with`` value that calls a function or names a rule is evaluated
    wrongly (the expression comes out undefined). Both are fine on OPA.
    """
    code = module.code
    top_level = set(re.findall(r"^([A-Za-z_]\w*)\s*(?::=|=|if\b|\{|contains\b)", code, re.M))
    found = []
    for match in _WITH.finditer(code):
        line = code.count("\n", 0, match.start()) + 1
        value = match.group(2).strip()
        head = re.match(r"[A-Za-z_][\w.]*", value)
        if match.group(1) == "input":
            found.append((line, "whole-document `with input as` (rego-cpp crashes on it)"))
        elif head and value[head.end() :].lstrip().startswith("("):
            found.append((line, f"`with` value calls {head.group(0)}() (rego-cpp mis-evaluates)"))
        elif head and head.group(0).split(".")[0] in top_level | {"data"}:
            found.append(
                (line, f"`with` value names rule {head.group(0)} (rego-cpp mis-evaluates)")
            )
    return found
