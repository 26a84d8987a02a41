"""``--set KEY=VALUE``: one config key addressed by its dotted path, the value parsed as YAML.

Tool names contain dots (``tickets.get``), so a plain split on ``.`` cannot address
``tools.tickets.get.path``. A segment of the key may therefore be double-quoted, and inside
or outside quotes a backslash escapes the next character::

    tools."tickets.get".path=/v2/tickets/{id}
    tools.tickets\\.get.path=/v2/tickets/{id}       (the same key)
    policy.engine=opa                              (no dots in names: no quoting)

The key ends at the first ``=`` outside quotes; everything after it is the value. An empty
segment, an unterminated quote or a dangling backslash is an error naming the item.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["OverrideError", "apply_overrides", "parse_override"]

EXAMPLE = 'policy.engine=opa, or tools."tickets.get".path=/v2/{id}'


class OverrideError(ValueError):
    """A malformed ``--set`` item; the message quotes it (config raises it as ConfigError)."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``item`` as (key segments, YAML value); :class:`OverrideError` when it is malformed."""
    keys: list[str] = []
    segment: list[str] = []
    in_quotes = False
    i = 0
    while i < len(item):
        char = item[i]
        if char == "\\":
            if i + 1 >= len(item):
                raise _bad(item, "a backslash at the end escapes nothing")
            segment.append(item[i + 1])
            i += 2
            continue
        if char == '"':
            in_quotes = not in_quotes
        elif in_quotes:
            segment.append(char)
        elif char == ".":
            keys.append(_segment(item, segment))
            segment = []
        elif char == "=":
            keys.append(_segment(item, segment))
            text = item[i + 1 :]
            try:
                value = yaml.safe_load(text) if text else ""
            except yaml.YAMLError as exc:
                raise _bad(item, f"the value is not valid YAML: {exc}") from None
            return keys, value
        else:
            segment.append(char)
        i += 1
    if in_quotes:
        raise _bad(item, "a quote is not closed")
    raise _bad(item, "expected KEY=VALUE")


def apply_overrides(raw: dict[str, Any], items: list[str]) -> None:
    """Set each ``--set`` item into the parsed config mapping ``raw`` (before validation)."""
    for item in items:
        keys, value = parse_override(item)
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(_quote(k) for k in keys[: depth + 1])
                raise _bad(item, f"{where} is not a mapping")
        node[keys[-1]] = value


def _segment(item: str, chars: list[str]) -> str:
    if not chars:
        raise _bad(item, 'a key segment is empty (quote a name containing dots: a."b.c".d)')
    return "".join(chars)


def _quote(key: str) -> str:
    if "." in key or '"' in key or "=" in key or "\\" in key:
        return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return key


def _bad(item: str, why: str) -> OverrideError:
    return OverrideError(f"--set {item!r}: {why} (e.g. {EXAMPLE})")
