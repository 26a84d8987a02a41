"""Find a secret's base64 and hex forms where the encoder wrapped its lines.

GNU ``base64``, Python's ``base64.encodebytes`` and MIME break base64 every 76 characters,
PEM every 64, ``xxd -p`` hex every 60, with ``\\n`` or ``\\r\\n`` (and in a JSON body those
come as the escapes ``\\\\n`` and ``\\\\r\\\\n``): a secret longer than ~57 bytes (a JWT-SVID)
is then never one unbroken run. A regex tolerating a break between any two characters costs
~0.4 s to compile for a JWT-SVID's forms; instead, only runs of base64/hex characters that
contain a line break are joined and searched with the plain forms' pattern, and each match is
mapped back onto the original text (breaks inside it included). Text without a line break
pays one ``in`` test; text without any form once its breaks are taken out, a few C-speed
replaces and substring searches (see ``finditer``).

:class:`WrappedForms` offers the two methods of ``re.Pattern`` that ``sidecar.classify`` uses
(``finditer`` and ``sub``), so it serves as a detector's pattern in values, bodies and streams.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["BREAK_CHARS", "WrappedForms", "span_bound"]

# The longest line break looked for: the JSON escape of CRLF (``\r\n`` as four characters).
BREAK_CHARS = 4
# Streams hold back enough for a form wrapped every this many characters or more.
MIN_COLUMNS = 16
_BREAKS = ("\\r\\n", "\\n", "\r\n", "\n")  # as text: JSON escapes first
_BREAK = re.compile(r"\r?\n|\\r\\n|\\n")
# A whole run (never from inside one, never backtracking into it: linear in the text), at
# least {0} characters long (the shortest form; checked ahead, so short runs of ordinary text
# cost no Python call), with a line break in it.
_RUN = (
    r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/_\r\n\\-]{{{0}}})"
    r"[A-Za-z0-9+/_-]++(?:(?:\r?\n|\\r\\n|\\n)[A-Za-z0-9+/_-]++)+"
)


def span_bound(length: int) -> int:
    """How long a form of ``length`` characters can be once wrapped (every ``MIN_COLUMNS``
    characters or more, with the longest break): what a stream must hold back to see it."""
    return length + BREAK_CHARS * (length // MIN_COLUMNS + 1)


@dataclass(frozen=True)
class Span:
    """A match in the original text (``re.Match``'s ``start``, ``end`` and ``group``)."""

    string: str
    begin: int
    finish: int

    def start(self) -> int:
        return self.begin

    def end(self) -> int:
        return self.finish

    def group(self, index: int = 0) -> str:
        if index != 0:
            raise IndexError("only group 0")
        return self.string[self.begin : self.finish]


class WrappedForms:
    """The given forms, each matched with line breaks anywhere inside it (or none)."""

    def __init__(self, forms: Iterable[str]) -> None:
        ordered = sorted(set(forms), key=lambda f: (-len(f), f))  # longest first
        if not ordered:
            raise ValueError("WrappedForms needs at least one form")
        self._forms = tuple(ordered)
        self._plain = re.compile("|".join(re.escape(f) for f in ordered))
        self._shortest = min(len(f) for f in ordered)
        self._run = re.compile(_RUN.format(self._shortest))

    def finditer(self, text: str) -> Iterator[Span]:
        if "\n" not in text and "\\n" not in text:
            return
        # Cheap and never wrong to skip on: with every break taken out (C-speed replaces and
        # substring searches), a wrapped form is a plain one. Only a text that has one pays
        # for finding where, run by run.
        joined = text
        for brk in _BREAKS:
            if brk[:2] in joined:  # most texts have no CR: half the copies are skipped
                joined = joined.replace(brk, "")
        if not any(form in joined for form in self._forms):
            return
        for run in self._run.finditer(text):
            if run.end() - run.start() >= self._shortest:
                yield from self._in_run(text, run.start(), run.group(0))

    def _in_run(self, text: str, offset: int, run: str) -> Iterator[Span]:
        pieces: list[str] = []
        joined_at = [0]  # where each line starts in the joined text ...
        original_at = [0]  # ... and in the run
        previous = 0
        for brk in _BREAK.finditer(run):
            pieces.append(run[previous : brk.start()])
            joined_at.append(joined_at[-1] + brk.start() - previous)
            original_at.append(brk.end())
            previous = brk.end()
        pieces.append(run[previous:])

        def original(index: int) -> int:
            line = bisect.bisect_right(joined_at, index) - 1
            return offset + original_at[line] + index - joined_at[line]

        for match in self._plain.finditer("".join(pieces)):
            yield Span(text, original(match.start()), original(match.end() - 1) + 1)

    def sub(self, repl: str | Callable[[Span], str], text: str) -> str:
        out: list[str] = []
        last = 0
        for span in self.finditer(text):
            out += [text[last : span.start()], repl(span) if callable(repl) else repl]
            last = span.end()
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)
