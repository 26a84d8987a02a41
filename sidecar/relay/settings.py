"""The sections of what calls are relayed to: ``relay`` (limits), ``targets`` and their
credentials, ``tools``, model ``providers`` and ``models``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar.validate import MIB, check, check_base_url

__all__ = [
    "DEFAULT_APIS",
    "FORMAT_APIS",
    "ModelSettings",
    "ProviderSettings",
    "RelaySettings",
    "TargetAuthSettings",
    "TargetSettings",
    "ToolSettings",
]


_PATH_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A header value that is one token (no separators, spaces or line breaks).
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9._-]+")


# The APIs each provider format can serve (``action.api``), and those an alias allows when it
# lists none: embeddings must be asked for (an embeddings model cannot chat).
FORMAT_APIS: dict[str, frozenset[str]] = {
    "openai": frozenset({"chat", "responses", "embeddings"}),
    "anthropic": frozenset({"messages"}),
}
DEFAULT_APIS: dict[str, tuple[str, ...]] = {
    "openai": ("chat", "responses"),
    "anthropic": ("messages",),
}
# Headers the sidecar sets itself: configured ``headers`` may not name them.
_OWN_HEADERS = frozenset(
    {"authorization", "x-api-key", "content-type", "content-length", "host", "accept"}
)


@dataclass(frozen=True)
class ProviderSettings:
    """A model provider and its API format. ``openai``: any OpenAI-compatible API (OpenAI,
    Azure OpenAI's /openai/v1, vLLM, Ollama, LiteLLM...): ``{base_url}/chat/completions``,
    ``/responses``, ``/embeddings``. ``anthropic``: the Messages API, ``{base_url}/messages``.
    The key is read from ``key_file`` (a mounted Secret), re-read when the file changes, sent
    in the format's scheme (``auth``: ``bearer`` is ``Authorization: Bearer``, the default for
    openai; ``x-api-key`` the default for anthropic) and never shown to the agent, logged or
    given to policy. ``headers`` are sent as configured (e.g. ``anthropic-beta``)."""

    base_url: str
    type: Literal["openai", "anthropic"] = "openai"
    # A file holding the API key; empty: no key (a local server).
    key_file: Path | None = None
    timeout_s: float = 60.0
    # PEM bundle to verify an https provider with (default: the system's CAs).
    ca_file: Path | None = None
    # How the key is sent; "": the format's default.
    auth: Literal["", "bearer", "x-api-key"] = ""
    # anthropic: the API version sent as ``anthropic-version``.
    anthropic_version: str = "2023-06-01"
    # anthropic: beta features, sent as one ``anthropic-beta`` header (the agent's is not).
    anthropic_beta: tuple[str, ...] = ()
    # Extra headers sent to the provider as configured (never the key's headers).
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_base_url(self.base_url)
        check(self.timeout_s > 0, "timeout_s: must be > 0")
        for beta in self.anthropic_beta:
            check(
                self.type == "anthropic" and _HEADER_TOKEN.fullmatch(beta) is not None,
                f"anthropic_beta: {beta!r} must be a feature name, for type anthropic only",
            )
        check(
            _HEADER_TOKEN.fullmatch(self.anthropic_version) is not None,
            "anthropic_version: must be a version such as 2023-06-01",
        )
        for name, value in self.headers.items():
            check(
                name.lower() not in _OWN_HEADERS,
                f"headers: {name!r} is set by the sidecar (the key goes in key_file)",
            )
            check(
                "\n" not in name + value and "\r" not in name + value,
                f"headers: {name!r} has a line break",
            )

    @property
    def auth_scheme(self) -> str:
        return self.auth or ("x-api-key" if self.type == "anthropic" else "bearer")


@dataclass(frozen=True)
class ModelSettings:
    """A model alias agents may ask for: which provider, which upstream model, and through
    which APIs (``apis``; default by the provider's format: openai ``chat`` and
    ``responses``, anthropic ``messages``; an embeddings model lists ``[embeddings]``)."""

    provider: str
    # The provider's name for the model (default: the alias).
    model: str = ""
    # What a call to it counts as for policy (read: no side effects beyond the answer).
    operation: Literal["read", "act", "delegate"] = "read"
    # The APIs the alias may be reached through; empty: the provider format's default.
    apis: tuple[Literal["chat", "responses", "embeddings", "messages"], ...] = ()

    def apis_for(self, provider_type: str) -> tuple[str, ...]:
        return tuple(self.apis) or DEFAULT_APIS.get(provider_type, ())


@dataclass(frozen=True)
class RelaySettings:
    """How allowed calls reach their upstreams."""

    # Calls relayed at once; further calls wait for a slot (within their deadline).
    max_concurrency: int = 32
    # Calls relayed at once to any one target (or provider): a slow target can hold at most
    # this many slots, so it can never starve the others. 0: half of max_concurrency.
    max_per_target: int = 0
    max_response_bytes: int = 4 * MIB

    def __post_init__(self) -> None:
        check(self.max_concurrency > 0, "max_concurrency: must be > 0")
        check(self.max_per_target >= 0, "max_per_target: must be >= 0")
        check(self.max_response_bytes > 0, "max_response_bytes: must be > 0")

    @property
    def per_target(self) -> int:
        return self.max_per_target or max(1, self.max_concurrency // 2)


@dataclass(frozen=True)
class TargetAuthSettings:
    """Upstream credential: ``jwt-svid`` (Bearer, for ``audience``), ``mtls``
    (the sidecar's X.509-SVID as client certificate, the upstream verified against the
    SPIFFE trust bundle and its DNS name), ``token-exchange`` (the user's token exchanged at
    ``token_endpoint`` for one for this upstream, RFC 8693), ``bearer`` (a static token from
    ``token_file``, for upstreams that know nothing better), or ``none``."""

    type: Literal["none", "jwt-svid", "mtls", "token-exchange", "bearer"] = "none"
    # bearer: the token is this file's content (a mounted Secret), read again when it changes.
    token_file: Path | None = None
    # jwt-svid: the JWT-SVID's audience; token-exchange: the audience asked for (optional).
    audience: str = ""
    # token-exchange: the authorization server, what to ask it for, how the sidecar proves
    # itself (its JWT-SVID as client assertion, for assertion_audience, default the
    # endpoint), and what the agent's user token is.
    token_endpoint: str = ""
    resource: str = ""
    scopes: tuple[str, ...] = ()
    assertion_audience: str = ""
    assertion_type: Literal["jwt-spiffe", "jwt-bearer"] = "jwt-spiffe"
    subject_token_type: Literal["access_token", "id_token", "jwt"] = "access_token"  # noqa: S105 (a token type name)
    ca_file: Path | None = None
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        exchange = (self.token_endpoint, self.resource, self.scopes, self.assertion_audience)
        check(
            (self.token_file is not None) == (self.type == "bearer"),
            "token_file: required for type bearer, and only for it",
        )
        if self.type == "jwt-svid":
            check(bool(self.audience), "audience: required when type is jwt-svid")
            check(
                not self.audience.startswith("agent-sidecar-delegate:"),
                "audience: agent-sidecar-delegate: is reserved for delegation links",
            )
        elif self.type != "token-exchange":
            check(not self.audience, "audience: only for type jwt-svid or token-exchange")
        if self.type == "token-exchange":
            check(bool(self.token_endpoint), "token_endpoint: required for token-exchange")
            check_base_url(self.token_endpoint)
            for scope in self.scopes:
                check(bool(scope) and " " not in scope, f"scopes: {scope!r} is not a scope")
            check(self.timeout_s > 0, "timeout_s: must be > 0")
        else:
            check(
                not any(exchange) and self.ca_file is None,
                "token_endpoint, resource, scopes, assertion_audience, ca_file: only for type "
                "token-exchange",
            )


@dataclass(frozen=True)
class TargetSettings:
    """An upstream service that tools are relayed to."""

    base_url: str
    timeout_s: float = 10.0
    # PEM bundle to verify an https upstream with (default: the system's CAs).
    ca_file: Path | None = None
    # The credential the sidecar injects; the agent never sees it.
    auth: TargetAuthSettings = field(default_factory=lambda: TargetAuthSettings())

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if self.auth.type == "mtls":
            check(parts.scheme == "https", "auth: type mtls needs an https base_url")
            check(self.ca_file is None, "ca_file: not with auth mtls (the SPIFFE bundle is used)")
        check_base_url(self.base_url)
        check(self.timeout_s > 0, "timeout_s: must be > 0")


@dataclass(frozen=True)
class ToolSettings:
    """One tool an agent may call: which upstream, which operation kind, which request."""

    target: str
    operation: Literal["read", "act", "delegate"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    # Path under the target's base_url; {name} placeholders are filled from the arguments.
    path: str
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        check(self.path.startswith("/"), f"path: {self.path!r} must start with '/'")
        check("?" not in self.path and "#" not in self.path, "path: no query or fragment")
        check(self.timeout_s is None or self.timeout_s > 0, "timeout_s: must be > 0")

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM_RE.findall(self.path))
