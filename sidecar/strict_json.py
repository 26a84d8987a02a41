"""The one strict JSON reader for what agents send (tool arguments, model requests, the front
door): a document policy sees must be exactly what is relayed and what is audited.

Refused, each with :class:`StrictJsonError` naming why: invalid JSON; a repeated object key
(policy and the upstream could read different values); ``NaN``/``Infinity`` (not JSON) and
numbers beyond a double (``1e400`` would read as infinity) or of more digits than Python reads;
nesting deeper than :data:`MAX_DEPTH`; and a lone UTF-16 surrogate escape (``"\\ud800"``:
valid JSON text, but not Unicode, so it can be neither sent as UTF-8 nor written to the audit
log).
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


class StrictJsonError(SidecarError):
    """The text is not a JSON document the sidecar accepts (the message says why)."""


class DuplicateKeyError(StrictJsonError):
    """An object repeats ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"repeats the key {key!r}")
        self.key = key


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that raises :class:`DuplicateKeyError` on a repeated key."""
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise DuplicateKeyError(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


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


def loads_strict(text: str | bytes, what: str) -> Any:
    """Parse ``text``; raise :class:`StrictJsonError` ("<what> <why>") on anything above."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=reject_duplicate_keys,
            parse_constant=_bad_constant,
            parse_float=_finite,
        )
    except StrictJsonError as exc:
        raise StrictJsonError(f"{what} {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StrictJsonError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise StrictJsonError(f"{what} is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise StrictJsonError(f"{what} holds a number that cannot be read: {exc}") from exc
    if _too_deep(value):
        raise StrictJsonError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    raw = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then the full check
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJsonError(
                f"{what} holds a lone UTF-16 surrogate escape, which is not Unicode text"
            ) from None
    return value
