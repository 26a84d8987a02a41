"""OPA's decision-log masking (plugins/logs/mask.go), applied to an event before it leaves:
``remove`` deletes the value at a JSON pointer under ``/input`` or ``/result`` and lists the
pointer in the event's ``erased``; ``upsert`` sets it (creating objects on the way) and lists
it in ``masked``. A pointer that does not resolve leaves the event as it was and is not
listed, as in OPA. Pointer segments are URL-path-escaped, as OPA matches them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from sidecar.policy.export.settings import check_mask_path

__all__ = ["MaskError", "MaskRule", "apply_masks"]


class MaskError(ValueError):
    """A mask rule that is not one OPA accepts."""


@dataclass(frozen=True)
class MaskRule:
    path: str
    op: Literal["remove", "upsert"] = "remove"
    value: Any = None
    parts: tuple[str, ...] = field(init=False, repr=False, compare=False)
    pointer: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = check_mask_path(self.path)
        if problem:
            raise MaskError(problem)
        if self.op not in ("remove", "upsert"):
            raise MaskError(f"mask op is not supported: {self.op}")
        # Go's url.PathEscape (shouldEscape, encodePathSegment): unreserved characters and
        # $ & + = : @ stay; everything else, ; , ? ! ' ( ) * included, is %-escaped. Python's
        # quote keeps the unreserved ones itself. Computed once, not per event.
        parts = tuple(quote(p, safe="$&+=:@") for p in self.path[1:].split("/"))
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "pointer", "/" + "/".join(parts))


class _Unresolved(Exception):
    pass


def apply_masks(event: dict[str, Any], rules: tuple[MaskRule, ...]) -> None:
    """Mask ``event`` in place (its input and result must be the event's own copies)."""
    for rule in rules:
        part, *rest = rule.parts
        if event.get(part) is None:
            continue
        try:
            if rule.op == "remove":
                if rest:
                    _remove(event[part], rest)
                else:
                    del event[part]
                event.setdefault("erased", []).append(rule.pointer)
            else:
                if rest:
                    if not isinstance(event[part], dict):
                        continue
                    _upsert(event[part], rest, rule.value)
                else:
                    event[part] = rule.value
                event.setdefault("masked", []).append(rule.pointer)
        except _Unresolved:
            continue


def _child(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key not in node:
            raise _Unresolved
        return node[key]
    if isinstance(node, list):
        return node[_index(key, len(node))]
    raise _Unresolved


def _index(key: str, size: int) -> int:
    if not key.isdigit() or int(key) >= size:
        raise _Unresolved
    return int(key)


def _remove(node: Any, path: list[str]) -> None:
    for key in path[:-1]:
        node = _child(node, key)
    last = path[-1]
    if isinstance(node, dict):
        if last not in node:
            raise _Unresolved
        del node[last]
    elif isinstance(node, list):
        del node[_index(last, len(node))]
    else:
        raise _Unresolved


def _upsert(node: dict[str, Any], path: list[str], value: Any) -> None:
    current: Any = node
    for key in path[:-1]:
        if isinstance(current, dict):
            current = current.setdefault(key, {})
        elif isinstance(current, list):
            current = current[_index(key, len(current))]
        else:
            raise _Unresolved
    last = path[-1]
    if isinstance(current, dict):
        current[last] = value
    elif isinstance(current, list):
        current[_index(last, len(current))] = value
    else:
        raise _Unresolved
