"""A2A 0.3 agent cards in A2A 1.0 terms, so the card the agent gets is always built from the
1.0 AgentCard schema (card_schema.py), whatever version the peer speaks.

The mapping is the official SDK's own (``a2a.client.card_resolver.parse_agent_card``):
``security`` -> ``securityRequirements``, ``securitySchemes`` ``{"type": ...}`` -> the 1.0
one-of wrappers, ``supportsAuthenticatedExtendedCard`` -> ``capabilities.extendedAgentCard``.
The 0.3 connection fields (``url``, ``preferredTransport``, ``additionalInterfaces``) are NOT
carried over: the agent's interfaces are the sidecar's, written by card_shape.py. Fields of
the wrong type are left for the schema projection to drop or keep as they are; nothing here
raises.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["is_v03", "to_v1"]

_SCHEME_TYPES = {
    "apiKey": "apiKeySecurityScheme",
    "http": "httpAuthSecurityScheme",
    "oauth2": "oauth2SecurityScheme",
    "openIdConnect": "openIdConnectSecurityScheme",
    "mutualTLS": "mtlsSecurityScheme",
}


def is_v03(card: Mapping[str, Any]) -> bool:
    """A card without the 1.0 ``supportedInterfaces`` is read as 0.3 (card_shape.py then
    requires its ``url``)."""
    return "supportedInterfaces" not in card


def to_v1(card: Mapping[str, Any]) -> dict[str, Any]:
    """A 1.0-shaped copy of the 0.3 ``card`` (connection fields left out)."""
    out = copy.deepcopy(dict(card))
    for key in ("url", "preferredTransport", "additionalInterfaces", "protocolVersion"):
        out.pop(key, None)
    if out.pop("supportsAuthenticatedExtendedCard", None) is True:
        capabilities = out.get("capabilities")
        if isinstance(capabilities, dict):
            capabilities.setdefault("extendedAgentCard", True)
        elif capabilities is None:
            out["capabilities"] = {"extendedAgentCard": True}
    legacy = out.pop("security", None)
    if "securityRequirements" not in out and legacy is not None:
        out["securityRequirements"] = _requirements(legacy)
    for skill in out.get("skills") or ():
        if isinstance(skill, dict):
            legacy_skill = skill.pop("security", None)
            if "securityRequirements" not in skill and legacy_skill is not None:
                skill["securityRequirements"] = _requirements(legacy_skill)
    schemes = out.get("securitySchemes")
    if isinstance(schemes, dict):
        out["securitySchemes"] = {name: _scheme(s) for name, s in schemes.items()}
    return out


def _requirements(legacy: Any) -> Any:
    if not isinstance(legacy, list):
        return legacy  # the wrong type: the projection keeps it, nothing reads it as 1.0
    return [
        {"schemes": {name: {"list": scopes} for name, scopes in item.items()}}
        if isinstance(item, dict)
        else item
        for item in legacy
    ]


def _scheme(scheme: Any) -> Any:
    kind = scheme.get("type") if isinstance(scheme, dict) else None
    if not isinstance(kind, str) or kind not in _SCHEME_TYPES:
        return scheme
    body = {k: v for k, v in scheme.items() if k != "type"}
    if kind == "apiKey" and "in" in body:
        body["location"] = body.pop("in")
    return {_SCHEME_TYPES[kind]: body}
