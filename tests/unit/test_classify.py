"""Data-class detectors: true positives, near misses, and typed redaction."""

from __future__ import annotations

import pytest

from sidecar.classify import classify, redact

POSITIVES = [
    ("email", "write to jane.doe+x@mail.example.co.uk please"),
    ("credit_card", "card 4111 1111 1111 1111"),
    ("credit_card", "4012-8888-8888-1881"),
    ("us_ssn", "ssn 123-45-6789"),
    ("secret", "key sk-proj-abcdefghijklmnopqrstuvwx1234"),
    ("secret", "token ghp_" + "a" * 36),
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmUifQ.c2lnbmF0dXJlLXBhcnQ"),
    ("private_key", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"),
    ("private_key", "-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----"),
    ("iban", "pay to DE89 3704 0044 0532 0130 00 today"),
    ("iban", "GB82WEST12345698765432"),
    ("phone", "call +44 20 7946 0958"),
    ("phone", "call +14155552671"),
    ("phone", "call (415) 555-2671 after 5"),
    ("phone", "call 415-555-2671"),
]
NEAR_MISSES = [
    "order 4111 1111 1111 1112",  # fails Luhn
    "call 1234-5678",
    "ssn 000-12-3456",  # invalid area
    "ssn 666-12-3456",
    "not-an-email@localhost",
    "sk-short",
    "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----",
    "version 1.2.3.4",
    "GB82WEST12345698765433",  # IBAN checksum off by one
    "due 2026-11-22",  # a date
    "order 415-5552-671",  # not a phone layout
    "ticket +1",  # too short
    "build 20261122.1234",
]


@pytest.mark.parametrize(("cls", "text"), POSITIVES)
def test_true_positives(cls, text):
    assert cls in classify({"a": text})


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_flagged(text):
    assert classify({"a": text}) == []


def test_redacting_phone_numbers_for_external_targets_works_end_to_end():
    note = {"note": "call me on +44 20 7946 0958 or mail a@example.com"}
    assert classify(note) == ["email", "phone"]
    assert redact(note, ["email", "phone"]) == {
        "note": "call me on [REDACTED:phone] or mail [REDACTED:email]"
    }


def test_nested_values_and_keys_are_scanned():
    assert classify({"outer": [{"deep": "x@example.com"}], "bob@example.com": 1}) == ["email"]


def test_redaction_replaces_only_the_requested_classes():
    value = {"note": "mail a@example.com, card 4111 1111 1111 1111", "n": 5}
    assert redact(value, ["email"]) == {
        "note": "mail [REDACTED:email], card 4111 1111 1111 1111",
        "n": 5,
    }
    both = redact(value, ["email", "credit_card"])
    assert both["note"] == "mail [REDACTED:email], card [REDACTED:credit_card]"
    assert value["note"].startswith("mail a@")  # the input is not modified


def test_an_iban_is_only_an_iban():
    # NL91ABNA0417164300's digits do not matter: a span one detector claims is not re-read.
    for text in (
        "GB82WEST12345698765432",
        "DE89370400440532013000",
        "pay DE89 3704 0044 0532 0130 00",
    ):
        assert classify({"a": text}) == ["iban"]


def test_more_secret_and_key_shapes():
    assert classify({"a": "xoxb-" + "1" * 12}) == ["secret"]
    assert classify({"a": "AIza" + "b" * 35}) == ["secret"]
    assert classify({"a": "github_pat_" + "c" * 40}) == ["secret"]
    assert classify({"a": "sk-ant-" + "d" * 30}) == ["secret"]
    assert classify({"a": "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----"}) == [
        "private_key"
    ]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 50])
def test_a_streamed_text_is_redacted_across_piece_boundaries(piece):
    from sidecar.classify import StreamRedactor

    text = (
        "key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345 then a pem -----BEGIN PRIVATE KEY-----\n"
        "MIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY----- and mail bob@example.org "
    ) * 2
    redactor = StreamRedactor(["secret", "private_key", "email"], hold=64)
    out = "".join(redactor.feed(text[i : i + piece]) for i in range(0, len(text), piece))
    out += redactor.flush()
    assert out == redact(text, ["secret", "private_key", "email"])
    assert "sk-proj" not in out and "MIIB" not in out and "bob@" not in out


def test_a_stream_redactor_without_classes_passes_text_through():
    from sidecar.classify import StreamRedactor

    redactor = StreamRedactor([])
    assert redactor.feed("a@example.com") == "a@example.com"
    assert redactor.flush() == ""
