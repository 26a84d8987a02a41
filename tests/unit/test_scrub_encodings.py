"""item 3 (issue 32): the shared scrubber removes a secret's common encodings too (base64 in
its three alignments, URL-safe base64, percent-encoding, hex, JSON escapes), in JSON values,
bodies and streams, computed once per secret; ordinary text is left alone."""

from __future__ import annotations

import base64
import json
import re
import secrets
from urllib.parse import quote, quote_plus

import pytest

from sidecar.relay.scrub import MIN_ENCODED_CHARS, Scrubber, encoded_forms
from tests.support.secret_forms import reveals

MARK = "[REDACTED:credential]"
SECRETS = [
    "tracker-token-0123456789",
    'trk "quoted" /slash+plus=eq&amp\\back',
    "ünïcödé-sécret-ключ-鍵",
    secrets.token_urlsafe(48),
]


def encodings(secret: str) -> dict[str, str]:
    raw = secret.encode()
    out = {
        "raw": secret,
        "json": json.dumps({"k": secret}),
        "percent": quote(secret, safe=""),
        "percent-path": quote(secret),
        "percent-plus": quote_plus(secret),
        "percent-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret)),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }
    for before in range(4):
        for after in range(3):
            blob = b"p" * before + raw + b"s" * after
            out[f"b64-{before}-{after}"] = base64.b64encode(blob).decode()
            out[f"b64url-{before}-{after}"] = base64.urlsafe_b64encode(blob).decode()
            out[f"b64-nopad-{before}-{after}"] = base64.b64encode(blob).decode().rstrip("=")
    return out


@pytest.mark.parametrize("secret", SECRETS, ids=range(len(SECRETS)))
def test_item3_every_common_encoding_of_a_secret_is_scrubbed_from_json_values(secret):
    assert reveals(secret, secret)  # the checker itself sees them
    for name, form in encodings(secret).items():
        assert reveals(f"before {form} after", secret), name
        scrubber = Scrubber([secret])
        answer = {"content": [{"type": "text", "text": f"before {form} after"}], form: 1}
        scrubbed = json.dumps(scrubber.value(answer), ensure_ascii=False)
        assert not reveals(scrubbed, secret), (name, scrubbed)
        assert MARK in scrubbed and scrubber.count >= 1


@pytest.mark.parametrize("secret", SECRETS, ids=range(len(SECRETS)))
def test_item3_every_common_encoding_is_scrubbed_from_bytes(secret):
    for name, form in encodings(secret).items():
        scrubber = Scrubber([secret])
        body = scrubber.bytes(f'{{"echo": "{form}"}}'.encode())
        assert not reveals(body.decode(), secret), name
        assert scrubber.count >= 1


def test_item3_an_encoded_secret_split_across_stream_chunks_is_caught():
    secret = secrets.token_urlsafe(600)  # a JWT-SVID's size: its hex form is ~1600 chars
    for form in (secret.encode().hex(), base64.b64encode(b"x" + secret.encode()).decode()):
        scrubber = Scrubber([secret])
        redactor = scrubber.stream([])
        text = f"start {form} end"
        out = "".join(redactor.feed(text[i : i + 7]) for i in range(0, len(text), 7))
        out += redactor.flush()
        assert not reveals(out, secret) and MARK in out


def test_item3_ordinary_text_and_short_secrets_are_left_alone():
    text = "The quick brown fox: 0123456789abcdef, aGVsbG8gd29ybGQ=, a%20b, 2+2=4."
    scrubber = Scrubber(["tracker-token-0123456789", "ab"])
    assert scrubber.value(text) == text.replace("ab", MARK) and scrubber.count == 1
    # a 2-byte secret is scrubbed verbatim only: its encodings would match ordinary text
    assert encoded_forms("ab") == frozenset({"ab"})
    assert all(len(f) >= MIN_ENCODED_CHARS for f in encoded_forms("seven77") - {"seven77"})
    for hostile in ("", None):
        Scrubber([hostile or ""]).value({"x": "y"})  # nothing to scrub: unchanged, no error


def test_item3_encoded_forms_are_computed_once_per_secret_not_per_response():
    secret = secrets.token_urlsafe(32)
    encoded_forms(secret)
    before = encoded_forms.cache_info()
    for _ in range(100):  # a call each: a new Scrubber with the same credential
        Scrubber([secret]).value({"text": "an answer"})
    after = encoded_forms.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 100
