"""Data classes found in call arguments, and redaction of them.

Detectors are regular expressions plus a validity check where one exists (Luhn for card
numbers, mod-97 for IBANs, area/group rules for SSNs, digit counts for phone numbers), so near
misses such as order numbers, dates and versions are not flagged. Order matters: detectors run
most specific first (keys, secrets, emails, IBANs before card numbers) and a span one detector
claimed is not seen by the later ones, so an IBAN whose digits pass Luhn is an IBAN only.
The classes found go into ``input.action.data_classes``; the ``redact`` obligation and the
``redacted`` log level replace matches with typed placeholders (``[REDACTED:email]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DETECTORS", "Detector", "classify", "redact"]


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = lambda _: True

    def matches(self, text: str) -> Iterable[re.Match[str]]:
        return (m for m in self.pattern.finditer(text) if self.valid(m.group(0)))


def _luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban(candidate: str) -> bool:
    """ISO 13616: 15 to 34 characters, and the mod-97 check of the rearranged number is 1."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1


def _phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    return 10 <= digits <= 15


def _ssn(candidate: str) -> bool:
    area, group, serial = candidate.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )?PRIVATE KEY-----"
        ),
    ),
    Detector(
        "secret",
        re.compile(
            r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic keys
            r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
            r"|github_pat_[A-Za-z0-9_]{40,}"
            r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
            r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
            r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
            r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"  # JWTs
        ),
    ),
    Detector(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ),
    Detector(
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        _iban,
    ),
    Detector("credit_card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), _luhn),
    Detector("us_ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), _ssn),
    Detector(
        "phone",
        # E.164 (+ and 8-15 digits, spaces/dashes allowed) or North American (xxx) xxx-xxxx.
        re.compile(
            r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}\b"
            r"|(?<![\w-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"
        ),
        _phone,
    ),
)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, int) and not isinstance(value, bool):
        yield str(value)  # a card number sent as a JSON number is still a card number
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def classify(value: Any, detectors: Iterable[Detector] = DETECTORS) -> list[str]:
    """Sorted names of the data classes found anywhere in a JSON value (keys included)."""
    detectors = tuple(detectors)
    found = set()
    for text in _strings(value):
        for detector in detectors:
            spans = [m.span() for m in detector.matches(text)]
            if spans:
                found.add(detector.name)
                text = _blank(text, spans)  # later detectors do not see a claimed span
    return sorted(found)


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in reversed(spans):
        text = text[:start] + "\x00" * (end - start) + text[end:]
    return text


def redact(value: Any, classes: Iterable[str], detectors: Iterable[Detector] = DETECTORS) -> Any:
    """A copy of a JSON value with every match of ``classes`` replaced by ``[REDACTED:class]``."""
    wanted = set(classes)
    active = tuple(d for d in detectors if d.name in wanted)
    if not active:
        return value

    def text(s: str) -> str:
        for detector in active:  # most specific first: keys before emails inside them
            s = detector.pattern.sub(
                lambda m, d=detector: f"[REDACTED:{d.name}]" if d.valid(m.group(0)) else m.group(0),
                s,
            )
        return s

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, int) and not isinstance(v, bool):
            redacted = text(str(v))  # a number that matches a class becomes its marker
            return v if redacted == str(v) else redacted
        if isinstance(v, dict):
            return {text(str(k)): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


_PEM_END = re.compile(r"-----END [A-Z ]*-----")


class StreamRedactor:
    """Redacts a text that arrives in pieces (a streamed completion) without letting a match
    slip through a piece boundary.

    Text is released only once no match can still grow into it: the last ``hold`` characters
    are kept back (longer than any single-line match), a match running into that tail moves
    the cut before it, and from an unfinished ``-----BEGIN`` (a PEM block spans lines) nothing
    is released until its ``-----END ...-----`` has arrived. ``flush`` releases the rest.
    """

    def __init__(
        self, classes: Iterable[str], hold: int = 256, extra: Iterable[Detector] = ()
    ) -> None:
        wanted = set(classes)
        self._active = tuple(d for d in (*extra, *DETECTORS) if d.name in wanted)
        self._hold = hold
        self._pending = ""

    def feed(self, text: str) -> str:
        if not self._active:
            return text
        self._pending += text
        cut = max(0, len(self._pending) - self._hold)
        begin = self._pending.rfind("-----BEGIN")
        if begin != -1 and not _PEM_END.search(self._pending, begin):
            cut = min(cut, begin)
        for detector in self._active:
            for match in detector.matches(self._pending):
                if match.start() < cut < match.end():
                    cut = match.start()
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return redact(released, [d.name for d in self._active], self._active)

    def flush(self) -> str:
        released, self._pending = self._pending, ""
        if not self._active:
            return released
        return redact(released, [d.name for d in self._active], self._active)
