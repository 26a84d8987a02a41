"""Where a status report or a decision-log batch goes: a service of ``policy.bundle.services``
(its URL, headers, bearer token or client certificate, CA) or an ``url`` of its own, and the
one POST both exporters make. Tokens are read when sending and never logged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ExportError",
    "Service",
    "UploadError",
    "header_value",
    "redacted_url",
    "resolve_service",
]


class ExportError(ValueError):
    """The export's configuration cannot be used (raised before the sidecar listens)."""


class UploadError(Exception):
    """One POST did not succeed (connection, timeout, or a non-2xx answer: ``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def rejected(self) -> bool:
        """The receiver refused this body for good (a 4xx other than 408 and 429): sending
        it again can only fail again, so the batch is dropped instead of retried."""
        return (
            self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)
        )


def header_value(value: str, what: str) -> str:
    """``value`` as an HTTP header value, or an UploadError naming ``what`` (never the
    value: it may be a secret). http.client sends headers as Latin-1 and a CR or LF
    would split the header."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise UploadError(f"{what} has a character that is not Latin-1") from None
    if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value):
        raise UploadError(f"{what} has a control character")
    return value


def redacted_url(url: str) -> str:
    """``url`` as it may be logged: no user:password@, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Service:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    token: str = field(default="", repr=False)
    token_path: Path | None = None
    scheme: str = "Bearer"
    client_cert: tuple[str, str] | None = None
    ca_cert: str | None = None

    def authorization(self) -> dict[str, str]:
        token = self.token
        if self.token_path is not None:
            try:
                # utf-8-sig: a byte-order mark (Notepad, PowerShell) is not part of a token.
                token = self.token_path.read_text(encoding="utf-8-sig").strip()
            except OSError as exc:
                raise UploadError(f"cannot read the token file: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise UploadError("the token file is not UTF-8 text") from None
        if not token:
            return {}
        return {"Authorization": header_value(f"{self.scheme} {token}", "the bearer token")}


def resolve_service(policy: Any, name: str, url: str, where: str) -> Service:
    """``name`` in ``policy.bundle.services`` (as OPA: the service key), or ``url``."""
    if url:
        return Service(url.rstrip("/"))
    bundle = getattr(policy, "bundle", None)
    services = getattr(bundle, "services", None) or {}
    if name not in services:
        raise ExportError(f"policy.{where}.service: {name!r} is not in policy.bundle.services")
    svc = services[name]
    creds = svc.credentials
    if creds.svid:
        raise ExportError(
            f"policy.{where}.service: {name!r} authenticates with the SVID, which the "
            "status and decision-log exports do not support; give them a url or a service "
            "with bearer or client_tls credentials"
        )
    bearer, tls = creds.bearer, creds.client_tls
    return Service(
        svc.url.rstrip("/"),
        headers=dict(svc.headers),
        token=bearer.token if bearer else "",
        token_path=bearer.token_path if bearer else None,
        scheme=bearer.scheme if bearer else "Bearer",
        client_cert=(str(tls.cert), str(tls.private_key)) if tls else None,
        ca_cert=str(svc.tls.ca_cert) if svc.tls.ca_cert else None,
    )


class Poster:
    """One HTTP session per exporter, used from its own thread only."""

    def __init__(self, service: Service, path: str, timeout_s: float) -> None:
        import requests  # here: only a configured export loads it

        self._requests = requests
        self._session = requests.Session()
        self._session.trust_env = False
        self._service = service
        self.url = service.url + path
        self.safe_url = redacted_url(self.url)  # what logs may show
        self._timeout = timeout_s

    def post_json(self, body: bytes, *, gzipped: bool, timeout_s: float | None = None) -> None:
        """POST ``body`` (already gzip-compressed when ``gzipped``); UploadError if it fails."""
        headers = {"Content-Type": "application/json"}
        for name, value in self._service.headers.items():
            headers[name] = header_value(value, f"header {name!r}")
        headers.update(self._service.authorization())
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=self._timeout if timeout_s is None else timeout_s,
                cert=self._service.client_cert,
                verify=self._service.ca_cert or True,
                allow_redirects=False,
            )
        except self._requests.RequestException as exc:
            raise UploadError(type(exc).__name__) from None
        except (ValueError, OSError) as exc:  # e.g. http.client refusing a header
            raise UploadError(type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise UploadError(f"HTTP {response.status_code}", response.status_code)

    def close(self) -> None:
        self._session.close()
