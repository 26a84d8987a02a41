"""The identifier members of an A2A request and the skill it names, checked for
sidecar/a2a/protocol.py's parser.

An identifier's place (``messageId``, ``taskId``, ``contextId``, ``tenant``,
``extensions``, ``referenceTaskIds``, ``acceptedOutputModes``, ...) holds a bounded string,
never a payload: MAX_ID_CHARS characters, MAX_ID_ITEMS items per list, else
``invalid_params``. Its content is still classified and redacted like any other value
(sidecar/a2a/shape.py): a bound says how much, not what.

The skill: a request names it under any top-level key of ``message.metadata`` or
``params.metadata`` that, case-folded with ``_`` and ``-`` removed, reads ``skill`` or
``skillid`` (``skill``, ``skillId``, ``Skill_ID``, ``SKILL``, ``skill-id``, ...). Policy
decides on one skill, so every such key must name the same (``skill_mismatch``): an agent or
peer reading any of those spellings acts on the skill that was decided. A skill named
elsewhere (a nested object, a data part) is not read here and decides nothing.
"""

from __future__ import annotations

from typing import Any

from sidecar.a2a.errors import A2aProtocolError

__all__ = [
    "MAX_ID_CHARS",
    "MAX_ID_ITEMS",
    "bad_params",
    "id_list",
    "ids",
    "is_skill_key",
    "skill_of",
    "string",
]

# An identifier, and one item of an identifier list.
MAX_ID_CHARS = 256
# Items of an identifier list (extensions, referenceTaskIds, acceptedOutputModes).
MAX_ID_ITEMS = 64
# What a key naming the skill reads as, case-folded with "_" and "-" removed.
_SKILL_NAMES = frozenset({"skill", "skillid"})
_INVALID_PARAMS = -32602  # JSON-RPC's
_RESOURCE_EXHAUSTED = -32015  # protocol.RESOURCE_EXHAUSTED


def bad_params(
    message: str, *, rpc: int = _INVALID_PARAMS, code: str = "invalid_params"
) -> A2aProtocolError:
    return A2aProtocolError(message, rpc_code=rpc, code=code)


def string(container: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    """``container[key]``: absent or null is "", else a string of at most MAX_ID_CHARS."""
    value = container.get(key)
    if value is None:
        if required:
            raise bad_params(f"{where}.{key} is required")
        return ""
    if not isinstance(value, str):
        raise bad_params(f"{where}.{key} must be a string")
    if len(value) > MAX_ID_CHARS:
        raise bad_params(f"{where}.{key} is longer than {MAX_ID_CHARS} characters")
    return value


def ids(container: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Each of ``keys`` present is a bounded string (``id`` may also be an integer)."""
    for key in keys:
        value = container.get(key)
        if key == "id" and isinstance(value, int) and not isinstance(value, bool):
            continue
        string(container, key, where)


def id_list(container: dict[str, Any], key: str, where: str) -> None:
    """``key``, when present, is a list of at most MAX_ID_ITEMS bounded strings."""
    value = container.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_params(f"{where}.{key} must be a list of strings")
    if len(value) > MAX_ID_ITEMS:
        message = f"{where}.{key} has {len(value)} items; the limit is {MAX_ID_ITEMS}"
        if key == "referenceTaskIds":  # the inbound listener's code (inbound_request.py)
            raise bad_params(message, rpc=_RESOURCE_EXHAUSTED, code="too_many_references")
        raise bad_params(message)
    if any(len(v) > MAX_ID_CHARS for v in value):
        raise bad_params(f"{where}.{key} has an item longer than {MAX_ID_CHARS} characters")
    if key == "referenceTaskIds" and not all(value):
        raise bad_params(f"{where}.{key} has an empty task id")


def is_skill_key(key: object) -> bool:
    """Whether a metadata key names the skill (``Skill``, ``skill-id``, ``SKILL_ID``, ...)."""
    return isinstance(key, str) and key.casefold().replace("_", "").replace("-", "") in _SKILL_NAMES


def skill_of(metadata: dict[str, Any], params_metadata: dict[str, Any]) -> str:
    """The one skill a message names: of its metadata (each key naming it a non-empty
    string), else of the params' metadata; "" when none. Two keys naming different skills
    (or a non-string beside the message's skill) is ``skill_mismatch``."""
    named = _named(metadata, "params.message.metadata")
    if not named:
        named = _named(params_metadata, "params.metadata")
    elif any(v != named[0] for k, v in params_metadata.items() if is_skill_key(k)):
        named.append("")  # another value (or type) beside the message's skill
    if len(set(named)) > 1:
        raise bad_params(
            "the request names more than one skill (every metadata key reading skill or "
            "skillId, case and _ or - aside, of message.metadata and params.metadata must "
            "agree)",
            code="skill_mismatch",
        )
    return named[0] if named else ""


def _named(metadata: dict[str, Any], where: str) -> list[str]:
    named = []
    for key in [k for k in metadata if is_skill_key(k)]:
        value = string(metadata, key, where)
        if not value:
            raise bad_params(f"{where}.{key} must be a non-empty string")
        named.append(value)
    return named
