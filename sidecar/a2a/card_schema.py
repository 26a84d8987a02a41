"""The A2A 1.0 AgentCard schema as a signature sees it: a card projected onto the fields the
specification defines (its protobuf messages, in their JSON names).

A 1.0 card's signature covers the AgentCard message, not the JSON document around it: an
official SDK server adds 0.3 compatibility fields (``url``, ``preferredTransport``,
``protocolVersion``, ...) to the card it serves, outside what it signed, and the SDK's own
verifier drops them by parsing the card into its message type. :func:`project` does the same
without the SDK: unknown fields are dropped, and a ``false`` in a boolean field without
presence (``required``, ``pkceRequired``) is dropped as proto3 JSON omits it. What the
sidecar keeps of a 1.0 card is this projection, so nothing unsigned reaches the agent or
policy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["project"]

STR, BOOL, BOOL_DEFAULT, ANY = "str", "bool", "bool_default", "any"

# message name -> JSON field -> kind: STR/BOOL/ANY, BOOL_DEFAULT (no presence: false is
# omitted), a message name, [kind] a list, ("map", kind) a map with string keys.
_FLOW = {"tokenUrl": STR, "refreshUrl": STR, "scopes": ("map", STR)}
SCHEMA: dict[str, dict[str, Any]] = {
    "AgentCard": {
        "name": STR,
        "description": STR,
        "supportedInterfaces": ["AgentInterface"],
        "provider": "AgentProvider",
        "version": STR,
        "documentationUrl": STR,
        "capabilities": "AgentCapabilities",
        "securitySchemes": ("map", "SecurityScheme"),
        "securityRequirements": ["SecurityRequirement"],
        "defaultInputModes": [STR],
        "defaultOutputModes": [STR],
        "skills": ["AgentSkill"],
        "iconUrl": STR,
    },
    "AgentInterface": {"url": STR, "protocolBinding": STR, "tenant": STR, "protocolVersion": STR},
    "AgentProvider": {"url": STR, "organization": STR},
    "AgentCapabilities": {
        "streaming": BOOL,
        "pushNotifications": BOOL,
        "extensions": ["AgentExtension"],
        "extendedAgentCard": BOOL,
    },
    "AgentExtension": {"uri": STR, "description": STR, "required": BOOL_DEFAULT, "params": ANY},
    "SecurityScheme": {
        "apiKeySecurityScheme": "APIKeySecurityScheme",
        "httpAuthSecurityScheme": "HTTPAuthSecurityScheme",
        "oauth2SecurityScheme": "OAuth2SecurityScheme",
        "openIdConnectSecurityScheme": "OpenIdConnectSecurityScheme",
        "mtlsSecurityScheme": "MutualTlsSecurityScheme",
    },
    "APIKeySecurityScheme": {"description": STR, "location": STR, "name": STR},
    "HTTPAuthSecurityScheme": {"description": STR, "scheme": STR, "bearerFormat": STR},
    "OAuth2SecurityScheme": {"description": STR, "flows": "OAuthFlows", "oauth2MetadataUrl": STR},
    "OAuthFlows": {
        "authorizationCode": "AuthorizationCodeOAuthFlow",
        "clientCredentials": "ClientCredentialsOAuthFlow",
        "implicit": "ImplicitOAuthFlow",
        "password": "PasswordOAuthFlow",
        "deviceCode": "DeviceCodeOAuthFlow",
    },
    "AuthorizationCodeOAuthFlow": {
        "authorizationUrl": STR,
        **_FLOW,
        "pkceRequired": BOOL_DEFAULT,
    },
    "ClientCredentialsOAuthFlow": dict(_FLOW),
    "ImplicitOAuthFlow": {"authorizationUrl": STR, "refreshUrl": STR, "scopes": ("map", STR)},
    "PasswordOAuthFlow": dict(_FLOW),
    "DeviceCodeOAuthFlow": {"deviceAuthorizationUrl": STR, **_FLOW},
    "OpenIdConnectSecurityScheme": {"description": STR, "openIdConnectUrl": STR},
    "MutualTlsSecurityScheme": {"description": STR},
    "SecurityRequirement": {"schemes": ("map", "StringList")},
    "StringList": {"list": [STR]},
    "AgentSkill": {
        "id": STR,
        "name": STR,
        "description": STR,
        "tags": [STR],
        "examples": [STR],
        "inputModes": [STR],
        "outputModes": [STR],
        "securityRequirements": ["SecurityRequirement"],
    },
}


def project(card: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``card`` the 1.0 AgentCard defines (``signatures`` excluded)."""
    return _message("AgentCard", card)


def _message(name: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return value  # the wrong type stays: shape checks refuse it, signatures fail on it
    fields = SCHEMA[name]
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = fields.get(key)
        if kind is None:
            continue
        if kind == BOOL_DEFAULT and item is False:
            continue
        out[key] = _value(kind, item)
    return out


def _value(kind: Any, item: Any) -> Any:
    if isinstance(kind, list):
        return [_value(kind[0], v) for v in item] if isinstance(item, list) else item
    if isinstance(kind, tuple):
        if not isinstance(item, dict):
            return item
        return {k: _value(kind[1], v) for k, v in item.items()}
    if kind in SCHEMA:
        return _message(kind, item)
    return item
