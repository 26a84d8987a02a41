"""Decisions remembered per policy revision, for inputs that repeat: the embedded engine's
evaluation is ~85% of a decision's CPU (bench/decision_path.py), and the same caller making
the same call (a Check polled, a retry, an MCP list deciding every tool again, an A2A peer
asked the same thing) gets the same answer from a deterministic policy.

The answer is reused only when reusing it cannot change it. A revision is *memoizable* when,
by a conservative lexical scan of its modules (strings and comments blanked, as
``compat.find_calls`` scans them):

* every ``input`` is a reference ``input.NAME`` with NAME neither ``request_id`` nor
  ``time_ns`` (the two members that differ on every call; they are left out of the key).
  ``input[...]``, a bare ``input`` (``x := input``, ``walk(input)``, ``with input as``) or a
  reference to either member makes the revision not memoizable;
* it calls no non-deterministic built-in (the clock, randomness, the network, tracing).

Everything else the policy can see (``data``, compiled into the revision) is fixed for the
revision, and the key is the rest of the input as canonical JSON, exact: the cache lives on
the revision's state, so a reload or a new bundle starts with an empty one. Only answers that
were defined and error-free are kept; an input that failed goes to the engine every time.
Bounded by entries and by key size (large arguments are not kept).

A miss costs ~20 µs (the key, the bookkeeping): traffic that never repeats would pay it on
every call for nothing. So the memo watches its hit rate: after ``probe`` lookups with fewer
than one in 16 hits it pauses for ``pause`` evaluations (the engine decides them; no key is
made), then probes again. Pausing only skips the memo; it never changes an answer.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sidecar.policy.compat import RegoModule, find_calls

__all__ = ["MAX_KEY_CHARS", "DecisionMemo", "not_memoizable"]

# Members that differ on every call: never read by a memoizable policy, so not in the key.
PER_CALL = ("request_id", "time_ns")
MAX_KEY_CHARS = 4096
PROBE, PAUSE = 256, 4096
# Built-ins whose answer depends on more than their arguments (OPA marks most of these
# non-deterministic), and the ones with side effects a reused answer would skip.
_IMPURE = re.compile(
    r"^(?:time\.now_ns|rand\.|uuid\.rfc4122|http\.|net\.lookup|opa\.runtime|io\.jwt\.decode_verify"
    r"|crypto\.x509\.parse_and_verify|providers\.|trace$|print$)"
)
_INPUT = re.compile(r"(?<![\w.])input\b")
_MEMBER = re.compile(r"\s*\.\s*([A-Za-z_]\w*)")


def not_memoizable(modules: Iterable[RegoModule]) -> str | None:
    """Why decisions of ``modules`` may not be reused (naming the file and line), or None."""
    for module in modules:
        code = module.code
        for match in _INPUT.finditer(code):
            member = _MEMBER.match(code, match.end())
            if member is None or member.group(1) in PER_CALL:
                line = code.count("\n", 0, match.start()) + 1
                what = f"input.{member.group(1)}" if member else "input other than input.NAME"
                return f"{module.path}:{line} reads {what}"
        for call in find_calls(module):
            if _IMPURE.match(call.name):
                return f"{module.path}:{call.line} calls {call.name}"
    return None


def _canonical_per_call(doc: dict[str, Any]) -> bool:
    """``request_id`` an ASCII string and ``time_ns`` a 64-bit integer, when present: those
    the engine accepts whatever their value, so they may stay out of the key."""
    request_id, time_ns = doc.get("request_id", ""), doc.get("time_ns", 0)
    return (
        type(request_id) is str
        and request_id.isascii()
        and type(time_ns) is int
        and -(2**63) <= time_ns < 2**63
    )


def _string_keys(value: Any) -> bool:
    """Every object key in ``value`` is a plain ``str`` (JSON text would not tell ``1`` from
    ``"1"``)."""
    if isinstance(value, dict):
        return all(type(k) is str and _string_keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(v) for v in value)
    return True


class DecisionMemo:
    """Answers by input (without its per-call members), least recently used evicted.
    Thread-safe: the engine's threads share it."""

    def __init__(self, size: int, *, probe: int = PROBE, pause: int = PAUSE) -> None:
        self._size = size
        self._probe, self._pause = probe, pause
        self._answers: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._window = [0, 0]  # lookups, hits since the last verdict
        self.paused = 0  # evaluations left to decide without the memo

    def wanted(self) -> bool:
        """Whether this evaluation should use the memo (False while paused)."""
        if self.paused <= 0:
            return True
        with self._lock:
            self.paused -= 1
        return False

    @staticmethod
    def key(input_doc: Any) -> str | None:
        """The input as canonical JSON without its per-call members; None when reusing an
        answer for it could differ from evaluating it: a shape the JSON text does not pin
        down exactly (a non-string object key, which ``json`` would turn into a string and
        the engine refuses; a value with no JSON form), a per-call member of another shape
        than the sidecar's own (the engine checks those), or a key too large to keep."""
        if type(input_doc) is not dict or not _canonical_per_call(input_doc):
            return None
        rest = {k: v for k, v in input_doc.items() if k not in PER_CALL}
        try:
            if not _string_keys(rest):
                return None
            text = json.dumps(
                rest, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
            )
        except (TypeError, ValueError, RecursionError):
            return None
        return text if len(text) <= MAX_KEY_CHARS else None

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, answer)`` (a fresh copy) when ``key`` is remembered, else ``(False, None)``."""
        with self._lock:
            text = self._answers.get(key)
            self._tally(text is not None)
            if text is None:
                self.misses += 1
                return False, None
            self._answers.move_to_end(key)
            self.hits += 1
        return True, json.loads(text)

    def _tally(self, hit: bool) -> None:
        """Count a lookup; a window of ``probe`` lookups with too few hits pauses the memo
        (called with the lock held)."""
        window = self._window
        window[0] += 1
        window[1] += hit
        if window[0] >= self._probe:
            if window[1] * 16 < window[0]:
                self.paused = self._pause
            window[0] = window[1] = 0

    def put(self, key: str, value: Any) -> None:
        """Remember ``value`` (a defined, error-free answer) for ``key``."""
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._answers[key] = text
            self._answers.move_to_end(key)
            while len(self._answers) > self._size:
                self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
