"""What an A2A agent card must look like before the sidecar pins it, its digest, and the
copy handed to the agent (every interface pointing at the sidecar).

Accepted: a JSON object with ``name``, ``description`` and ``version`` strings, ``skills`` a
list of objects each with a unique non-empty string ``id`` (and, when present, string
``name``/``description`` and a list of strings ``tags``), and either A2A 1.0
``supportedInterfaces`` (objects with string ``url`` and ``protocolBinding``) or the 0.3
``url``. Known optional fields must have their types. Anything else is ``card_malformed``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from sidecar.a2a.card_compat import is_v03, to_v1
from sidecar.a2a.card_schema import project
from sidecar.a2a.card_signature import card_payload, signed_content
from sidecar.a2a.errors import CardError

__all__ = ["MAX_SKILLS", "card_digest", "rewrite_for_agent", "skill_ids", "validate_card"]

MAX_SKILLS = 256
_SKILL_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_STRING_LISTS = ("defaultInputModes", "defaultOutputModes")


def _bad(message: str) -> CardError:
    return CardError(f"the card {message}", code="card_malformed", outcome="peer_bad_response")


def validate_card(card: Any) -> dict[str, Any]:
    """``card`` when it is a card the sidecar accepts, else :class:`CardError`."""
    if not isinstance(card, dict):
        raise _bad("is not a JSON object")
    for key in ("name", "description", "version"):
        if not isinstance(card.get(key), str):
            raise _bad(f"has no string {key!r}")
    interfaces = card.get("supportedInterfaces")
    if interfaces is None and not isinstance(card.get("url"), str):
        raise _bad("names no supportedInterfaces (1.0) and no url (0.3)")
    for field in ("supportedInterfaces", "additionalInterfaces"):
        value = card.get(field)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise _bad(f"has {field} that is not a list of objects")
        for item in value:
            if not isinstance(item.get("url"), str):
                raise _bad(f"has an entry of {field} without a string url")
            binding = item.get("protocolBinding", item.get("transport", ""))
            if not isinstance(binding, str):
                raise _bad(f"has an entry of {field} whose binding is not a string")
    for field in _STRING_LISTS:
        value = card.get(field)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _bad(f"has {field} that is not a list of strings")
    for field in ("capabilities", "provider", "securitySchemes"):
        if card.get(field) is not None and not isinstance(card[field], dict):
            raise _bad(f"has {field} that is not an object")
    signatures = card.get("signatures")
    if signatures is not None and not isinstance(signatures, list):
        raise _bad("has signatures that is not a list")
    _validate_skills(card.get("skills"))
    return card


def _validate_skills(skills: Any) -> None:
    if not isinstance(skills, list):
        raise _bad("has no skills list")
    if len(skills) > MAX_SKILLS:
        raise _bad(f"lists more than {MAX_SKILLS} skills")
    seen: set[str] = set()
    for skill in skills:
        if not isinstance(skill, dict):
            raise _bad("has a skill that is not an object")
        skill_id = skill.get("id")
        if not isinstance(skill_id, str) or not _SKILL_ID.match(skill_id):
            raise _bad("has a skill without an id (1..128 printable characters)")
        if skill_id in seen:
            raise _bad(f"lists the skill {skill_id!r} twice")
        seen.add(skill_id)
        for key in ("name", "description"):
            if key in skill and not isinstance(skill[key], str):
                raise _bad(f"has skill {skill_id!r} whose {key} is not a string")
        tags = skill.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _bad(f"has skill {skill_id!r} whose tags are not a list of strings")


def skill_ids(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The ids of the card's skills, in the card's order."""
    return tuple(s["id"] for s in card.get("skills", ()))


def card_digest(card: Mapping[str, Any]) -> str:
    """``sha256:`` over the canonical card without its signatures (what a signature covers):
    re-signing the same card does not change it; any other change does."""
    return "sha256:" + hashlib.sha256(card_payload(card)).hexdigest()


def rewrite_for_agent(card: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """The card the agent gets: built from an allow-list, never copied. The official client
    calls the URL inside the card, so any interface left pointing at the peer (an
    ``additionalInterfaces`` on a 1.0 card, a proto-name alias such as
    ``supported_interfaces`` that protobuf JSON also reads) would let the agent bypass the
    sidecar. So: a 0.3 card is converted to 1.0 (card_compat.py), the card is projected onto
    the 1.0 AgentCard schema (card_schema.py; unknown fields and ``signatures`` dropped), and
    the only interface fields written are the sidecar's JSON-RPC endpoint at ``base_url``
    (plus, for a 0.3 peer, the 0.3 ``url``/``preferredTransport``/``additionalInterfaces``
    naming the same endpoint)."""
    v03 = is_v03(card)
    content = signed_content(card)  # nothing a signature would not cover
    body = project(to_v1(content) if v03 else content)
    interfaces = card.get("supportedInterfaces")
    version = _text(card.get("protocolVersion"), "0.3.0") if v03 else "1.0"
    if isinstance(interfaces, list) and interfaces and isinstance(interfaces[0], dict):
        version = _text(interfaces[0].get("protocolVersion"), "1.0")
    body["supportedInterfaces"] = [
        {"url": base_url, "protocolBinding": "JSONRPC", "protocolVersion": version}
    ]
    if v03:
        body |= {
            "url": base_url,
            "preferredTransport": "JSONRPC",
            "protocolVersion": version,
            "additionalInterfaces": [{"url": base_url, "transport": "JSONRPC"}],
        }
    return body


def _text(value: Any, default: str) -> str:
    """A protocol version as the sidecar writes it: the peer's when it is a short plain
    string, else ``default``."""
    ok = isinstance(value, str) and 0 < len(value) <= 16 and value.isprintable()
    return value if ok else default
