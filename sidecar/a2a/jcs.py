"""RFC 8785 JSON Canonicalization Scheme (JCS): the bytes an A2A card signature covers and
the card digest is taken over.

Keys sorted by their UTF-16 code units, no whitespace, strings escaped only where JSON must
(``"``, ``\\``, controls), everything else literal UTF-8, numbers as ECMAScript writes them.
Refused with :class:`JcsError`: non-finite numbers, integers a double cannot hold exactly, a
lone surrogate, a non-string key, and nesting deeper than :data:`MAX_DEPTH` (a card is
attacker-written; recursion must not be).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

__all__ = ["MAX_DEPTH", "JcsError", "canonicalize"]

MAX_DEPTH = 64
_SAFE_INT = 2**53 - 1
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


class JcsError(ValueError):
    """The value has no RFC 8785 canonical form."""


def canonicalize(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value (dict/list/str/int/float/bool/None)."""
    parts: list[str] = []
    _emit(value, parts, 0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JcsError("holds a lone surrogate, which is not Unicode") from exc


def _emit(value: Any, out: list[str], depth: int) -> None:
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise JcsError(f"nests deeper than {MAX_DEPTH}")
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise JcsError("has an object key that is not a string")
            out.append("{")
            for i, key in enumerate(sorted(value, key=_utf16_units)):
                out.append("," if i else "")
                out.append(_string(key))
                out.append(":")
                _emit(value[key], out, depth + 1)
            out.append("}")
        else:
            out.append("[")
            for i, item in enumerate(value):
                out.append("," if i else "")
                _emit(item, out, depth + 1)
            out.append("]")
    elif value is None:
        out.append("null")
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, int):
        if abs(value) > _SAFE_INT:
            raise JcsError(f"the integer {value} is beyond what a JSON number holds exactly")
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    else:
        raise JcsError(f"a {type(value).__name__} is not a JSON value")


def _utf16_units(key: str) -> bytes:
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise JcsError("an object key holds a lone surrogate") from exc


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _number(value: float) -> str:
    """ECMA-262 Number::toString over the shortest round-trip digits (Python's repr)."""
    if not math.isfinite(value):
        raise JcsError(f"{value} is not a JSON number")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = int(exponent) + k  # the decimal point sits after n digits
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"
    return sign + text
