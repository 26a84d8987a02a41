"""Credentials the sidecar injected never travel back to the agent.

An upstream that echoes its request (a debugging endpoint, an error page quoting headers, a
provider error that repeats the key) would hand the agent the JWT-SVID or the provider key the
sidecar sent for it. Everything returned to the agent is scrubbed of each credential injected
for that call: bodies, error bodies, completions and streamed chunks (streams through
``classify.StreamRedactor``, so a credential split across chunks is caught too). Each match
becomes ``[REDACTED:credential]``, and the audit record counts them (``credentials_scrubbed``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sidecar.classify import Detector, StreamRedactor, redact

__all__ = ["CREDENTIAL", "Scrubber"]

CREDENTIAL = "credential"
_MARKER = f"[REDACTED:{CREDENTIAL}]"


class Scrubber:
    """Removes the given secret values (and their JSON-escaped forms) from what is returned."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: list[str] = []
        self._detectors: tuple[Detector, ...] = ()
        self.count = 0
        for secret in secrets:
            self.add(secret)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, secret: str) -> None:
        """One more credential injected for this call (e.g. minted in the relay thread)."""
        if not secret:
            return
        forms = set(self._forms) | {secret, json.dumps(secret)[1:-1]}
        self._forms = sorted(forms, key=len, reverse=True)  # longest first
        pattern = re.compile("|".join(re.escape(f) for f in self._forms))
        self._detectors = (Detector(CREDENTIAL, pattern),)

    def bytes(self, body: bytes) -> bytes:
        for form in self._forms:
            raw = form.encode()
            found = body.count(raw)
            if found:
                self.count += found
                body = body.replace(raw, _MARKER.encode())
        return body

    def value(self, value: Any) -> Any:
        """A JSON value with every string scrubbed."""
        if not self._detectors:
            return value
        scrubbed = redact(value, [CREDENTIAL], self._detectors)
        if scrubbed != value:
            self.count += json.dumps(scrubbed).count(_MARKER) - json.dumps(value).count(_MARKER)
        return scrubbed

    def count_stream(self, raw: str, delivered: str) -> None:
        """Count what a :meth:`stream` redactor removed from ``raw`` to give ``delivered``."""
        self.count += max(0, delivered.count(_MARKER) - raw.count(_MARKER))

    def stream(self, classes: Iterable[str]) -> StreamRedactor:
        """A stream redactor for ``classes`` that also removes the credentials."""
        return StreamRedactor([*classes, CREDENTIAL], extra=self._detectors)
