"""``policy.bundle``: where the embedded engine downloads its policy from, in OPA's terms.

The keys mean what they mean in OPA's configuration (``services``, ``bundles``, ``keys``), so
a team's existing bundle server and signing keys work unchanged. The embedded engine serves one
bundle at a time: more than one is refused here, not half-supported later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from sidecar.policy.bundle.glob import BadPatternError, compile_glob
from sidecar.validate import MIB, check

__all__ = [
    "ALGORITHMS",
    "BearerCredentials",
    "BundleSettings",
    "BundleSource",
    "ClientTlsCredentials",
    "KeySettings",
    "PollingSettings",
    "ServiceCredentials",
    "ServiceSettings",
    "ServiceTls",
    "SigningSettings",
    "header_safe",
]

# Public-key JWS algorithms a bundle signature may use (HMAC would put a secret in config).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def header_safe(value: str) -> bool:
    """Whether ``value`` can go in an HTTP header as is: no CR, LF or NUL, latin-1 only
    (otherwise ``http.client`` raises with the value, a secret, in its message)."""
    return not any(c in value for c in "\r\n\0") and all(ord(c) < 256 for c in value)


@dataclass(frozen=True)
class BearerCredentials:
    """OPA's ``credentials.bearer``: a token, or a file holding one (re-read on every request)."""

    token: str = field(default="", repr=False)
    token_path: Path | None = None
    scheme: str = "Bearer"

    def __post_init__(self) -> None:
        check(bool(self.token) != (self.token_path is not None), "token: set token or token_path")
        check(re.fullmatch(r"[A-Za-z0-9_-]+", self.scheme) is not None, "scheme: not a word")
        check(header_safe(self.token), "token: contains a line break or a non-latin-1 character")


@dataclass(frozen=True)
class ClientTlsCredentials:
    """OPA's ``credentials.client_tls``: a client certificate and key (PEM files)."""

    cert: Path
    private_key: Path


@dataclass(frozen=True)
class ServiceCredentials:
    """At most one of OPA's ``bearer`` / ``client_tls``, or ``svid: true``: the sidecar's own
    X.509-SVID as the client certificate (an extension; OPA has no SPIFFE identity)."""

    bearer: BearerCredentials | None = None
    client_tls: ClientTlsCredentials | None = None
    svid: bool = False

    def __post_init__(self) -> None:
        chosen = [self.bearer is not None, self.client_tls is not None, self.svid]
        check(sum(chosen) <= 1, "bearer: choose one of bearer, client_tls, svid")


@dataclass(frozen=True)
class ServiceTls:
    """OPA's ``tls``: the CA that signs the bundle server's certificate (default: system CAs)."""

    ca_cert: Path | None = None


@dataclass(frozen=True)
class ServiceSettings:
    """OPA's ``services.<name>``."""

    url: str
    credentials: ServiceCredentials = field(default_factory=ServiceCredentials)
    tls: ServiceTls = field(default_factory=ServiceTls)
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    response_header_timeout_seconds: int = 10

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        check(
            parts.scheme in ("http", "https") and bool(parts.hostname),
            f"url: {self.url!r} is not an http(s)://HOST[:PORT][/PATH] URL",
        )
        check(not parts.username and not parts.password, "url: credentials in the URL")
        check(not parts.query and not parts.fragment, "url: no query or fragment")
        check(
            0 < self.response_header_timeout_seconds <= 600,
            "response_header_timeout_seconds: 1..600",
        )
        for name, value in self.headers.items():
            check(
                re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) is not None,
                f"headers: {name!r} is not a header name",
            )
            check(
                isinstance(value, str) and header_safe(value),
                f"headers: {name}: the value contains a line break or a non-latin-1 character",
            )
            check(
                name.lower() not in ("authorization", "if-none-match", "prefer"),
                f"headers: {name} is set by the poller (use credentials for authorization)",
            )


@dataclass(frozen=True)
class PollingSettings:
    """OPA's ``bundles.<name>.polling``: wait a random time in [min, max] between downloads
    (also the back-off after a failure); long polling when the server supports it."""

    min_delay_seconds: int = 60
    max_delay_seconds: int = 120
    long_polling_timeout_seconds: int = 0

    def __post_init__(self) -> None:
        check(self.min_delay_seconds >= 1, "min_delay_seconds: must be >= 1")
        check(
            self.max_delay_seconds >= self.min_delay_seconds,
            "max_delay_seconds: must be >= min_delay_seconds",
        )
        check(
            0 <= self.long_polling_timeout_seconds <= 3600, "long_polling_timeout_seconds: 0..3600"
        )


@dataclass(frozen=True)
class SigningSettings:
    """OPA's ``bundles.<name>.signing``: the key (by id in ``keys``), the expected scope, and
    files left out of the signature check (globs, as ``filepath.Match``)."""

    keyid: str = ""
    scope: str = ""
    exclude_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in self.exclude_files:
            try:
                compile_glob(pattern)
            except BadPatternError as exc:
                raise ValueError(f"exclude_files: {exc} (syntax of Go's filepath.Match)") from None


@dataclass(frozen=True)
class BundleSource:
    """OPA's ``bundles.<name>``."""

    service: str
    resource: str = ""
    persist: bool = True
    polling: PollingSettings = field(default_factory=PollingSettings)
    signing: SigningSettings | None = None
    # Largest download and largest unpacked bundle accepted (OPA: size_limit_bytes).
    size_limit_bytes: int = 32 * MIB

    def __post_init__(self) -> None:
        check(1024 <= self.size_limit_bytes <= 1024 * MIB, "size_limit_bytes: 1 KiB..1 GiB")
        check(".." not in self.resource.split("/"), "resource: must not contain '..'")
        check(
            not any(c in self.resource for c in "?#\r\n\0 "),
            "resource: a path only (no query, fragment, space or control character)",
        )


@dataclass(frozen=True)
class KeySettings:
    """OPA's ``keys.<id>``: a PEM public key (``key``, or ``key_path``), its algorithm, scope."""

    algorithm: str = "RS256"
    key: str = ""
    key_path: Path | None = None
    scope: str = ""

    def __post_init__(self) -> None:
        check(
            self.algorithm in ALGORITHMS,
            f"algorithm: {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}",
        )
        check(bool(self.key) != (self.key_path is not None), "key: set key or key_path")
        if self.key:
            check("PRIVATE KEY" not in self.key, "key: a private key; give the public key")
            check("-----BEGIN " in self.key, "key: not a PEM public key or certificate")

    def public_pem(self) -> bytes:
        if self.key_path is not None:
            return self.key_path.read_bytes()
        return self.key.encode()


@dataclass(frozen=True)
class BundleSettings:
    """``policy.bundle``: the embedded engine's policy comes from a bundle server."""

    services: Mapping[str, ServiceSettings] = field(default_factory=lambda: MappingProxyType({}))
    bundles: Mapping[str, BundleSource] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, KeySettings] = field(default_factory=lambda: MappingProxyType({}))
    # Where the last good bundle is kept (OPA: persistence_directory) and served from on restart.
    persistence_directory: Path = Path(".agent-sidecar/bundles")
    # A policy directory that serves until the first bundle revision is active; unset, the
    # sidecar is NOT_SERVING (and denies every call) until then.
    fallback_dir: Path | None = None

    def __post_init__(self) -> None:
        check(len(self.bundles) == 1, "bundles: the embedded engine serves exactly one bundle")
        for name in self.services:
            check(_NAME.fullmatch(name) is not None, f"services: {name!r} is not a valid name")
        for name, source in self.bundles.items():
            check(_NAME.fullmatch(name) is not None, f"bundles: {name!r} is not a valid name")
            check(
                source.service in self.services,
                f"bundles: {name}.service {source.service!r} is not in services",
            )
            signing = source.signing
            if signing is not None and signing.keyid:
                check(
                    signing.keyid in self.keys,
                    f"bundles: {name}.signing.keyid {signing.keyid!r} is not in keys",
                )
            if signing is not None:
                check(bool(self.keys), f"bundles: {name}.signing needs at least one key in keys")

    @property
    def name(self) -> str:
        return next(iter(self.bundles))

    @property
    def source(self) -> BundleSource:
        return self.bundles[self.name]

    @property
    def service(self) -> ServiceSettings:
        return self.services[self.source.service]

    @property
    def url(self) -> str:
        """The bundle's URL: the service URL joined with the resource (default
        ``bundles/<name>``, as OPA)."""
        resource = self.source.resource or f"bundles/{self.name}"
        return self.service.url.rstrip("/") + "/" + resource.lstrip("/")
