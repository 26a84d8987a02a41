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
    """A payment card number: 13 to 19 digits, a card network's first digit (2 to 6: Mastercard
    2 and 5, Amex, Diners and JCB 3, Visa 4, Discover and UnionPay 6) and the Luhn check.
    Program-made numbers (millisecond timestamps and snowflake ids start with 1 for decades)
    are not cards: without the first-digit rule one such id in ten passes Luhn."""
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19 or not 2 <= digits[0] <= 6:
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


_BUILTIN = {id(d): d for d in DETECTORS}
_COMBINED: dict[tuple[int, ...], Callable[[str], object]] = {}
_SHORT = 48  # characters: up to here one combined search is cheaper


def _always(_text: str) -> bool:
    return True


def _could_match(detectors: tuple[Detector, ...]) -> Callable[[str], object]:
    """One search for "could any of ``detectors`` match here", for short strings (ids, names,
    short texts: most match nothing, and one search saves the detectors' call overheads;
    past ~50 characters the separate patterns scan faster than their alternation, so longer
    strings go to the detectors directly). Exact as a filter: an alternation finds a match
    wherever one of its patterns does (each detector's own pattern and check still decide).
    Only the built-in detectors are combined (and the combinations kept, by their ids, which
    never change: they live as long as the module): a call's own detectors
    (sidecar/relay/scrub.py) carry its secrets, which must not outlive it."""
    ids = tuple(map(id, detectors))
    search = _COMBINED.get(ids)
    if search is not None:
        return search
    if not ids or not all(i in _BUILTIN for i in ids):
        return _always
    patterns = [_BUILTIN[i].pattern for i in ids]
    if any(p.flags != re.UNICODE for p in patterns):  # flags of its own: not combined
        return _always
    search = re.compile("|".join(f"(?:{p.pattern})" for p in patterns)).search
    if len(_COMBINED) < 128:  # 7 detectors in their fixed order: far fewer subsets in use
        _COMBINED[ids] = search
    return search


def classify(value: Any, detectors: Iterable[Detector] = DETECTORS) -> list[str]:
    """Sorted names of the data classes found anywhere in a JSON value (keys included)."""
    detectors = tuple(detectors)
    could_match = _could_match(detectors)
    found = set()
    for text in _strings(value):
        if len(text) <= _SHORT and not could_match(text):
            continue
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
    could_match = _could_match(active)

    def text(s: str) -> str:
        if len(s) <= _SHORT and not could_match(s):
            return s
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
# A PEM block held unfinished past this many characters is not waited for: it is replaced by
# one marker and dropped up to its END (a real private key's PEM is at most ~13 kB), so a
# stream that opens a block and never ends it holds bounded memory.
PEM_HOLD_MAX = 64 * 1024
_END_TAIL = 256  # characters of a dropped block kept to find an END split across pieces


class StreamRedactor:
    """Redacts a text that arrives in pieces (a streamed completion) without letting a match
    slip through a piece boundary.

    Text is released only once no match can still grow into it: the last ``hold`` characters
    are kept back (longer than any single-line match), a match running into that tail moves
    the cut before it, and from an unfinished ``-----BEGIN`` (a PEM block spans lines; only
    when ``private_key`` is wanted) nothing is released until its ``-----END ...-----`` has
    arrived. ``flush`` releases the rest.

    The work is linear in the text, however it is cut: while a block is held, the held text
    is searched again only once it has grown by a quarter (each search is over all of it),
    and a block held past ``PEM_HOLD_MAX`` characters becomes ``[REDACTED:private_key]``,
    the rest of it dropped up to its END (or the stream's end). ``scanned`` counts the
    characters searched, for tests.
    """

    def __init__(
        self, classes: Iterable[str], hold: int = 256, extra: Iterable[Detector] = ()
    ) -> None:
        wanted = set(classes)
        self._active = tuple(d for d in (*extra, *DETECTORS) if d.name in wanted)
        self._names = [d.name for d in self._active]
        self._pem = "private_key" in wanted
        self._hold = hold
        self._pending = ""
        self._next_scan = 0  # a block is held: search again once pending is this long
        self._dropping: str | None = None  # the tail of a dropped over-long block
        self.scanned = 0

    def feed(self, text: str) -> str:
        if not self._active:
            return text
        if self._dropping is not None:
            return self._drop(text)
        self._pending += text
        pending = self._pending
        if len(pending) < self._next_scan:
            return ""
        self.scanned += len(pending)
        cut = max(0, len(pending) - self._hold)
        begin = pending.rfind("-----BEGIN") if self._pem else -1
        holding = begin != -1 and not _PEM_END.search(pending, begin)
        if holding:
            if len(pending) - begin > PEM_HOLD_MAX:
                return self._start_drop(begin)
            cut = min(cut, begin)
        cut = self._before_matches(cut, 0, len(pending))
        released, self._pending = pending[:cut], pending[cut:]
        held = len(self._pending)
        # Searched again once grown by a quarter, or as soon as the block passes the cap.
        over_cap = PEM_HOLD_MAX + begin - cut + 1
        self._next_scan = min(held + max(held // 4, 1), over_cap) if holding else 0
        return redact(released, self._names, self._active)

    def _before_matches(self, cut: int, start: int, end: int) -> int:
        """``cut`` moved before any match (in ``pending[start:end]``) running across it. A
        window's edge may make a match start at it: the cut then moves earlier (more held),
        never later. (A detector's pattern offers ``finditer(text)`` only: WrappedForms.)"""
        whole = start == 0 and end >= len(self._pending)
        text = self._pending if whole else self._pending[start:end]
        for detector in self._active:
            for match in detector.pattern.finditer(text):
                first, last = match.start() + start, match.end() + start
                if first < cut < last and detector.valid(match.group(0)):
                    cut = first
        return cut

    def _start_drop(self, begin: int) -> str:
        """The held block is too long to wait for: what precedes it is released (redacted),
        the block becomes one marker, and what follows is dropped until its END."""
        window = max(0, begin - self._hold)
        self.scanned += min(len(self._pending), begin + self._hold) - window
        cut = self._before_matches(begin, window, begin + self._hold)
        released = self._pending[:cut]
        self._dropping = self._pending[cut:][-_END_TAIL:]
        self._pending, self._next_scan = "", 0
        return redact(released, self._names, self._active) + "[REDACTED:private_key]"

    def _drop(self, text: str) -> str:
        window = (self._dropping or "") + text
        self.scanned += len(window)
        end = _PEM_END.search(window)
        if end is None:
            self._dropping = window[-_END_TAIL:]
            return ""
        self._dropping = None
        return self.feed(window[end.end() :])

    def flush(self) -> str:
        if self._dropping is not None:  # the stream ended inside a dropped block
            self._dropping = None
            return ""
        released, self._pending = self._pending, ""
        self._next_scan = 0
        if not self._active:
            return released
        return redact(released, self._names, self._active)
