"""Go's ``filepath.Match`` (Unix), the glob OPA applies to ``signing.exclude_files``.

Python's ``fnmatch`` differs where it matters for a signature check: its ``*`` crosses ``/``
(so ``*.json`` would also leave ``agentsidecar/data.json`` unverified), it negates with ``[!``
and accepts malformed patterns. Here ``*`` and ``?`` never match ``/``, ``[^...]`` negates,
``\\`` escapes, and a malformed pattern is refused (Go's ``ErrBadPattern``), at configuration.
"""

from __future__ import annotations

import re

__all__ = ["BadPatternError", "compile_glob", "glob_match"]


class BadPatternError(ValueError):
    """The pattern is malformed (Go: ``filepath.ErrBadPattern``)."""


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The whole-name regex for ``pattern``. Raises :class:`BadPatternError`."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise BadPatternError(f"{pattern!r}: ends with an escape")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            klass, i = _klass(pattern, i + 1)
            out.append(klass)
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match(pattern, name)`` (an error for a bad pattern, never False)."""
    return compile_glob(pattern).fullmatch(name) is not None


def _klass(pattern: str, i: int) -> tuple[str, int]:
    """A character class after its ``[``: (regex, index after ``]``)."""
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i >= len(pattern):
            raise BadPatternError(f"{pattern!r}: unterminated character class")
        if pattern[i] == "]" and count:
            i += 1
            break
        lo, i = _char(pattern, i)
        hi = lo
        if i < len(pattern) and pattern[i] == "-":
            hi, i = _char(pattern, i + 1)
        count += 1
        if lo <= hi:  # Go accepts a reversed range; it matches nothing
            ranges.append(f"{re.escape(lo)}-{re.escape(hi)}")
    body = "".join(ranges)
    if negated:  # Go: a negated class matches any other character, '/' included
        return (f"[^{body}]" if body else "."), i
    return (f"[{body}]" if body else "(?!)"), i


def _char(pattern: str, i: int) -> tuple[str, int]:
    """One (possibly escaped) character of a class, as Go's ``getEsc``."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise BadPatternError(f"{pattern!r}: malformed character class")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise BadPatternError(f"{pattern!r}: ends with an escape")
    return pattern[i], i + 1
