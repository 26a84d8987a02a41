"""Credentials the sidecar injected never travel back to the agent.

An upstream that echoes its request (a debugging endpoint, an error page quoting headers, a
provider error that repeats the key, an MCP server printing its own token) would hand the agent
the JWT-SVID, the provider key or the ``env_files`` secret the sidecar gave it. Everything
returned to the agent is scrubbed of each secret handed over for that call: bodies, error
bodies, completions and streamed chunks (streams through ``classify.StreamRedactor``, so a
secret split across chunks is caught too). Each match becomes ``[REDACTED:credential]``, and
the audit record counts them (``credentials_scrubbed``).

Not only the secret itself: its common encodings too (:func:`encoded_forms`): JSON-escaped,
standard and URL-safe base64 in each of the three alignments it can have inside a longer
base64 text, percent-encoded, hex. The base64 and hex forms are found also when the encoder
wrapped its lines (GNU base64, MIME and ``encodebytes`` at 76 columns, PEM at 64, ``xxd -p`` at
60; ``\n``, ``\r\n`` or their JSON escapes; :mod:`sidecar.relay.unwrap`): a JWT-SVID is
longer than one line. The forms are computed once per secret and the patterns once per set of
secrets (both cached), never per response: the hot path pays a lookup.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from sidecar.classify import Detector, StreamRedactor, redact
from sidecar.relay.unwrap import WrappedForms, span_bound

__all__ = ["CREDENTIAL", "MIN_ENCODED_CHARS", "Scrubber", "encoded_forms", "wrappable_forms"]

CREDENTIAL = "credential"
_MARKER = f"[REDACTED:{CREDENTIAL}]"
# An encoded form shorter than this would match ordinary text: it is not looked for (a secret
# of 7 bytes or more has every form at least this long; shorter ones are scrubbed verbatim).
MIN_ENCODED_CHARS = 8
_CACHE = 512
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _base64_cores(raw: bytes) -> set[str]:
    """The characters of base64 that encode only ``raw``'s bits, whatever precedes it in the
    encoded text (0, 1 or 2 bytes modulo 3) and whatever follows: standard and URL-safe."""
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
        start = (0, 2, 3)[shift]  # characters that carry bits of what came before
        end = (shift + len(raw)) * 8 // 6  # the last whole character of raw's own bits
        core = encoded[start:end]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def _percent_forms(secret: str) -> set[str]:
    forms = {quote(secret, safe=""), quote(secret), quote_plus(secret, safe="")}
    return forms | {_PERCENT.sub(lambda m: m.group(0).lower(), f) for f in forms}


@functools.lru_cache(maxsize=_CACHE)
def encoded_forms(secret: str) -> frozenset[str]:
    """The secret and each encoding of it an upstream could plausibly send back."""
    raw = secret.encode()
    encoded = {json.dumps(secret)[1:-1], *_base64_cores(raw), *_percent_forms(secret)}
    encoded |= {binascii.hexlify(raw).decode(), binascii.hexlify(raw).decode().upper()}
    return frozenset({secret} | {f for f in encoded if len(f) >= MIN_ENCODED_CHARS})


@functools.lru_cache(maxsize=_CACHE)
def wrappable_forms(secret: str) -> frozenset[str]:
    """The forms an encoder may break into lines: base64 (each alignment, both alphabets)
    and hex, as long as :func:`encoded_forms` looks for them."""
    raw = secret.encode()
    hexed = binascii.hexlify(raw).decode()
    forms = {*_base64_cores(raw), hexed, hexed.upper()}
    return frozenset(f for f in forms if len(f) >= MIN_ENCODED_CHARS)


@functools.lru_cache(maxsize=_CACHE)
def _compiled(forms: tuple[str, ...], wrappable: tuple[str, ...]) -> tuple[Detector, ...]:
    pattern = re.compile("|".join(re.escape(f) for f in forms))  # longest first
    detectors = [Detector(CREDENTIAL, pattern)]
    if wrappable:  # after the plain forms: what is left of them is only the wrapped ones
        detectors.append(Detector(CREDENTIAL, WrappedForms(wrappable)))  # type: ignore[arg-type]
    return tuple(detectors)


class Scrubber:
    """Removes the given secret values (and their encoded forms) from what is returned."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._forms: tuple[str, ...] = ()
        self._wrappable: tuple[str, ...] = ()
        self.count = 0
        for secret in secrets:
            self.add(secret)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, secret: str) -> None:
        """One more secret handed over for this call (e.g. minted in the relay thread)."""
        if not secret or secret in self._secrets:
            return
        self._secrets.add(secret)
        forms = set(self._forms) | encoded_forms(secret)
        self._forms = tuple(sorted(forms, key=lambda f: (-len(f), f)))  # longest first
        self._wrappable = tuple(sorted(set(self._wrappable) | wrappable_forms(secret)))

    @property
    def _detectors(self) -> tuple[Detector, ...]:
        return _compiled(self._forms, self._wrappable) if self._forms else ()

    def bytes(self, body: bytes) -> bytes:
        for form in self._forms:
            raw = form.encode()
            found = body.count(raw)
            if found:
                self.count += found
                body = body.replace(raw, _MARKER.encode())
        if self._wrappable and (b"\n" in body or b"\\n" in body):
            # Latin-1 maps each byte to one character and back: base64, hex and line breaks
            # are ASCII, so a body in any encoding (or none) is searched and kept byte-exact.
            text = body.decode("latin-1")
            wrapped = _compiled(self._forms, self._wrappable)[-1].pattern
            found = 0

            def marker(_: object) -> str:
                nonlocal found
                found += 1
                return _MARKER

            scrubbed = wrapped.sub(marker, text)
            if found:
                self.count += found
                body = scrubbed.encode("latin-1")
        return body

    def value(self, value: Any) -> Any:
        """A JSON value with every string scrubbed."""
        if not self._forms:
            return value
        scrubbed = redact(value, [CREDENTIAL], self._detectors)
        if scrubbed != value:
            self.count += json.dumps(scrubbed).count(_MARKER) - json.dumps(value).count(_MARKER)
        return scrubbed

    def text(self, text: str) -> str:
        """A text with every secret scrubbed (what is logged or put in a message)."""
        return str(self.value(text))

    def count_stream(self, raw: str, delivered: str) -> None:
        """Count what a :meth:`stream` redactor removed from ``raw`` to give ``delivered``."""
        self.count += max(0, delivered.count(_MARKER) - raw.count(_MARKER))

    def stream(self, classes: Iterable[str]) -> StreamRedactor:
        """A stream redactor for ``classes`` that also removes the secrets: it holds back
        at least the longest form (wrapped, for base64 and hex: ``unwrap.span_bound``), so
        none slips out half-received."""
        longest = max(
            max((len(f) for f in self._forms), default=0),
            max((span_bound(len(f)) for f in self._wrappable), default=0),
        )
        return StreamRedactor([*classes, CREDENTIAL], hold=max(256, longest), extra=self._detectors)
