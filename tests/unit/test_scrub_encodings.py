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


# --- item 2 (review of issue 32): base64 and hex with line breaks --------------------------

JWT_LIKE = "eyJhbGciOiJFUzI1NiJ9." + secrets.token_urlsafe(420) + "." + secrets.token_urlsafe(64)
LONG_SECRETS = [JWT_LIKE, "sk-proj-" + secrets.token_urlsafe(48)]  # ~660 and 72 bytes


def _wrap(text: str, width: int, newline: str) -> str:
    return newline.join(text[i : i + width] for i in range(0, len(text), width))


def wrapped_encodings(secret: str) -> dict[str, str]:
    """How GNU base64, encodebytes, MIME, PEM and ``xxd -p`` wrap a secret, in each alignment."""
    out = {}
    for before in range(3):
        blob = b"p" * before + secret.encode() + b"!"
        std, url = base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode()
        out |= {
            f"gnu-{before}": _wrap(std, 76, "\n") + "\n",
            f"encodebytes-{before}": base64.encodebytes(blob).decode(),
            f"mime-{before}": _wrap(std, 76, "\r\n"),
            f"pem-{before}": _wrap(std, 64, "\n"),
            f"pem-crlf-{before}": _wrap(std, 64, "\r\n"),
            f"url-76-{before}": _wrap(url, 76, "\n"),
        }
    out["xxd-p"] = _wrap(secret.encode().hex(), 60, "\n")
    out["xxd-p-upper"] = _wrap(secret.encode().hex().upper(), 60, "\r\n")
    return out


def reveals_wrapped(text: str, secret: str) -> bool:
    """``reveals``, also once every line break (and its JSON escape) is taken out."""
    joined = text
    for brk in ("\\r\\n", "\\n", "\r\n", "\n"):
        joined = joined.replace(brk, "")
    return reveals(text, secret) or reveals(joined, secret)


@pytest.mark.parametrize("secret", LONG_SECRETS, ids=["jwt-svid", "api-key"])
def test_item2_wrapped_base64_and_hex_are_scrubbed_from_json_values(secret):
    for name, form in wrapped_encodings(secret).items():
        assert "\n" in form and reveals_wrapped(form, secret), name  # the checker sees it
        scrubber = Scrubber([secret])
        answer = {"content": [{"type": "text", "text": f"-----BEGIN X-----\n{form}\nend"}]}
        scrubbed = json.dumps(scrubber.value(answer), ensure_ascii=False)
        assert not reveals_wrapped(scrubbed, secret), (name, scrubbed[:300])
        assert MARK in scrubbed and scrubber.count >= 1, name


@pytest.mark.parametrize("secret", LONG_SECRETS, ids=["jwt-svid", "api-key"])
def test_item2_wrapped_forms_are_scrubbed_from_plain_and_json_bodies(secret):
    for name, form in wrapped_encodings(secret).items():
        plain, as_json = form.encode(), json.dumps({"echo": form}).encode()  # \n escaped
        assert b"\\n" in as_json and b"\n" not in as_json
        for body in (b"\xff\xfe binary \x00" + plain + b"\xc3(", as_json):
            scrubber = Scrubber([secret])
            out = scrubber.bytes(body)
            assert not reveals_wrapped(out.decode("latin-1"), secret), (name, out[:200])
            assert scrubber.count >= 1 and MARK.encode() in out
            assert out.startswith(body[:10])  # the bytes around are kept exactly


def test_item2_wrapped_forms_split_across_stream_chunks_are_caught():
    for name, form in wrapped_encodings(JWT_LIKE).items():
        redactor = Scrubber([JWT_LIKE]).stream([])
        text = f"start {form} end"
        out = "".join(redactor.feed(text[i : i + 5]) for i in range(0, len(text), 5))
        out += redactor.flush()
        assert not reveals_wrapped(out, JWT_LIKE) and MARK in out, name


def test_item2_text_with_line_breaks_but_no_secret_is_left_alone():
    scrubber = Scrubber([JWT_LIKE])
    other = base64.encodebytes(secrets.token_bytes(300_000))  # ~400 kB of wrapped base64
    prose = "line one\nline two\\nthree\r\nQUJD\nREVG\n" * 1000
    hostile = "\n" * 5000 + "\\n" * 5000 + "A\nB\n" * 5000
    for text in (other.decode(), prose, hostile, JWT_LIKE[:40] + "\n" + JWT_LIKE[41:80]):
        assert scrubber.value(text) == text
        assert scrubber.bytes(text.encode()) == text.encode()
    assert scrubber.count == 0


@pytest.mark.parametrize("length", [40, 108, 164, 400])
def test_item2_a_stream_holds_back_a_bounded_number_of_characters(length):
    """The first-byte delay a provider key adds to a streamed completion, in characters:
    the hex form (2x the key) wrapped with the longest break every 16 characters, at least
    256; text arrives as soon as more than that has come (docs/mcp.md has the table)."""
    key = ("sk-" + secrets.token_urlsafe(length))[:length]
    bound = max(256, 2 * length + 4 * (2 * length // 16 + 1))
    redactor = Scrubber([key]).stream([])
    text = "The answer is forty-two, and here is why. " * 60
    released, fed = "", 0
    while not released:
        released += redactor.feed(text[fed])
        fed += 1
    assert fed == bound + 1 and bound <= 2.5 * length + 260
    assert released + "".join(redactor.feed(c) for c in text[fed:]) + redactor.flush() == text
