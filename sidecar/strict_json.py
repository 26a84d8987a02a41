"""The one strict JSON reader for what agents send (tool arguments, model requests, the front
door): a document policy sees must be exactly what is relayed and what is audited.

Refused, each with :class:`StrictJsonError` naming why: invalid JSON; a repeated object key
(policy and the upstream could read different values); ``NaN``/``Infinity`` (not JSON) and
numbers beyond a double (``1e400`` would read as infinity) or of more digits than Python reads;
nesting deeper than :data:`MAX_DEPTH`; and a lone UTF-16 surrogate, escaped (``"\\ud800"``:
valid JSON text, but not Unicode, so it can be neither sent as UTF-8 nor written to the audit
log) or raw (bytes that are not strictly UTF-8, UTF-16 or UTF-32 text).

Text from upstream (a peer's answer, its events and errors) is read with ``quote=False``: the
message then holds nothing of the text, only a fixed reason. A peer that repeats as a key the
credential it was sent must not get it quoted into the error the agent and the audit log see.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sidecar.errors import SidecarError

__all__ = [
    "MAX_DEPTH",
    "DuplicateKeyError",
    "StrictJsonError",
    "loads_strict",
    "reject_duplicate_keys",
]

MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A surrogate code unit in a str (Python strings may hold one; strictly decoded bytes cannot).
_SURROGATE_UNIT = re.compile(r"[\ud800-\udfff]")


class StrictJsonError(SidecarError):
    """The text is not a JSON document the sidecar accepts (the message says why)."""


class DuplicateKeyError(StrictJsonError):
    """An object repeats ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"repeats the key {key!r}")
        self.key = key


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that raises :class:`DuplicateKeyError` on a repeated key."""
    value = dict(pairs)
    if len(value) != len(pairs):  # only then look for which key (the parse's hot path)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return value


def _bad_constant(name: str) -> Any:
    raise StrictJsonError(f"contains {name}, which is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError("holds a number beyond the range of a double")
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _brackets(text: str) -> int:
    return text.count("{") + text.count("[")


def _as_text(text: str | bytes, what: str) -> str:
    """Bytes decoded strictly in the encoding ``json.loads`` would pick: its own decode lets
    surrogate code units through (``surrogatepass``), which no relay or log can encode."""
    if isinstance(text, str):
        return text
    try:
        return text.decode(json.detect_encoding(text))
    except UnicodeDecodeError:
        raise StrictJsonError(
            f"{what} is not valid JSON (not UTF-8, UTF-16 or UTF-32 text)"
        ) from None


def loads_strict(text: str | bytes, what: str, *, quote: bool = True) -> Any:
    """Parse ``text``; raise :class:`StrictJsonError` ("<what> <why>") on anything above.
    ``quote=False`` (upstream text): the message is fixed, nothing of ``text`` in it (no key,
    no parser detail) and no exception chained that holds it."""
    given_str = isinstance(text, str)
    text = _as_text(text, what)
    try:
        value = json.loads(
            text,
            object_pairs_hook=reject_duplicate_keys,
            parse_constant=_bad_constant,
            parse_float=_finite,
        )
    except DuplicateKeyError as exc:
        raise StrictJsonError(f"{what} {exc if quote else 'repeats a key'}") from None
    except StrictJsonError as exc:  # a fixed reason (NaN, a number beyond a double)
        raise StrictJsonError(f"{what} {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if not quote:
            raise StrictJsonError(f"{what} is not valid JSON") from None
        raise StrictJsonError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise StrictJsonError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        if not quote:
            raise StrictJsonError(f"{what} holds a number that cannot be read") from None
        raise StrictJsonError(f"{what} holds a number that cannot be read: {exc}") from exc
    # Nesting N deep needs N opening brackets in the text: counting them (C speed) spares the
    # walk for every document with at most MAX_DEPTH of them, i.e. nearly all.
    if _brackets(text) > MAX_DEPTH and _too_deep(value):
        raise StrictJsonError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(text) or (
        given_str and not text.isascii() and _SURROGATE_UNIT.search(text)
    ):  # rare: only then the full check
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJsonError(
                f"{what} holds a lone UTF-16 surrogate, which is not Unicode text"
            ) from None
    return value
