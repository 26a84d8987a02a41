"""Relay of allowed model calls to OpenAI-compatible providers.

The sidecar builds the provider request itself: ``POST {base_url}/chat/completions`` with the
provider's model name and ``Authorization: Bearer <key>`` from the provider's key file. Nothing
of the agent's HTTP request (its own ``Authorization`` above all) is forwarded. Streams are
read as server-sent events on a worker thread and handed over chunk by chunk; a stream that
breaks off, or ends without ``data: [DONE]``, is :class:`UpstreamStreamInterrupted`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from sidecar import __version__
from sidecar.config import ProviderSettings
from sidecar.relay.errors import (
    ProviderKeyUnavailable,
    UpstreamBadResponse,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
    UpstreamStreamInterrupted,
    UpstreamTimeout,
    UpstreamUnavailable,
    never_connected,
)
from sidecar.relay.http import read_bounded

__all__ = ["ModelRelay", "ProviderKey"]

_ERROR_BODY_LIMIT = 4096


class ProviderKey:
    """A provider's API key from its file (a mounted Secret), read again whenever the file
    changes (a rotated Secret), never shown: ``repr`` names the file only."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._key = ""

    def get(self) -> str | None:
        if self._path is None:
            return None
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ProviderKeyUnavailable(
                f"the provider key file {self._path} cannot be read ({exc.strerror})"
            ) from None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._seen:
                try:
                    self._key = self._path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise ProviderKeyUnavailable(
                        f"the provider key file {self._path} cannot be read ({type(exc).__name__})"
                    ) from None
                self._seen = stamp
            key = self._key
        if not key:
            raise ProviderKeyUnavailable(f"the provider key file {self._path} is empty")
        return key

    def __repr__(self) -> str:
        return f"ProviderKey({self._path})"


class ModelRelay:
    """Sends chat completions to providers. Blocking: call it from a worker thread."""

    def __init__(
        self,
        providers: Mapping[str, ProviderSettings],
        *,
        max_response_bytes: int,
        pool_size: int = 16,
    ) -> None:
        self._providers = providers
        self._max = max_response_bytes
        self.keys = {name: ProviderKey(p.key_file) for name, p in providers.items()}
        self._sessions: dict[str, requests.Session] = {}
        for name in providers:
            session = requests.Session()
            session.trust_env = False
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions[name] = session

    def url(self, provider: str) -> str:
        return self._providers[provider].base_url.rstrip("/") + "/chat/completions"

    def _post(
        self, provider: str, body: dict[str, Any], timeout_s: float, headers: Mapping[str, str]
    ) -> requests.Response:
        settings = self._providers[provider]
        all_headers = {
            "User-Agent": f"agent-sidecar/{__version__}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if body.get("stream") else "application/json",
            **headers,
        }
        key = self.keys[provider].get()
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        try:
            response = self._sessions[provider].post(
                self.url(provider),
                data=json.dumps(body, separators=(",", ":")).encode(),
                headers=all_headers,
                timeout=timeout_s,
                allow_redirects=False,
                stream=True,
                verify=str(settings.ca_file) if settings.ca_file else True,
            )
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                f"the provider did not answer within {timeout_s:.1f}s",
                reached=not never_connected(exc),
            ) from exc
        except requests.RequestException as exc:
            raise UpstreamUnavailable(
                f"the provider is unreachable ({type(exc).__name__})",
                reached=not never_connected(exc),
            ) from exc
        if not 200 <= response.status_code < 300:
            with response:
                body_bytes = response.raw.read(_ERROR_BODY_LIMIT, decode_content=True) or b""
            raise UpstreamStatusError(
                response.status_code, body_bytes, response.headers.get("Content-Type", "")
            )
        return response

    def complete(
        self,
        provider: str,
        body: dict[str, Any],
        *,
        timeout_s: float,
        headers: Mapping[str, str],
    ) -> dict[str, Any]:
        """One chat completion: the provider's ``chat.completion`` object. ``timeout_s``
        bounds the whole exchange (see ``read_bounded``)."""
        deadline = time.monotonic() + timeout_s
        response = self._post(provider, body, timeout_s, headers)
        try:
            with response:
                content = read_bounded(response, self._max, "the provider's answer", deadline)
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                f"the provider did not answer within {timeout_s:.1f}s",
                reached=not never_connected(exc),
            ) from exc
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(
                    f"the provider did not finish within {timeout_s:.1f}s", reached=True
                ) from exc
            raise UpstreamUnavailable(
                f"the provider's answer broke off ({type(exc).__name__})"
            ) from exc
        try:
            completion = json.loads(content)
        except ValueError as exc:
            raise UpstreamBadResponse("the provider's answer is not JSON") from exc
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise UpstreamBadResponse("the provider's answer is not a chat.completion object")
        return completion

    def stream(
        self,
        provider: str,
        body: dict[str, Any],
        *,
        timeout_s: float,
        headers: Mapping[str, str],
        on_chunk: Callable[[dict[str, Any]], None],
        cancelled: threading.Event,
    ) -> None:
        """Read a streamed completion; ``on_chunk`` gets each ``chat.completion.chunk``."""
        response = self._post(provider, body, timeout_s, headers)
        done, size, data = False, 0, []
        try:
            with response:
                for raw in response.iter_lines(chunk_size=1024):
                    if cancelled.is_set():
                        return
                    size += len(raw)
                    if size > self._max:
                        raise UpstreamResponseTooLarge(
                            f"the provider's stream exceeds relay.max_response_bytes ({self._max})"
                        )
                    line = raw.decode("utf-8", errors="replace")
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                        continue
                    if line or not data:
                        continue  # a comment, event name or id line; or nothing to dispatch
                    payload, data = "\n".join(data), []
                    if payload == "[DONE]":
                        done = True
                        break
                    on_chunk(_chunk(payload))
                if data and "\n".join(data) == "[DONE]":
                    done = True
        except requests.Timeout as exc:
            raise UpstreamStreamInterrupted(
                f"the provider's stream stalled for {timeout_s:.1f}s"
            ) from exc
        except requests.RequestException as exc:
            raise UpstreamStreamInterrupted(
                f"the provider's stream broke off ({type(exc).__name__})"
            ) from exc
        if not done:
            raise UpstreamStreamInterrupted("the provider's stream ended without [DONE]")

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()


def _chunk(payload: str) -> dict[str, Any]:
    try:
        chunk = json.loads(payload)
    except ValueError as exc:
        raise UpstreamBadResponse("a streamed chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamBadResponse("a streamed chunk is not a JSON object")
    if "error" in chunk:
        raise UpstreamStreamInterrupted("the provider sent an error in the stream")
    return chunk
