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
]


@pytest.mark.parametrize(("cls", "text"), POSITIVES)
def test_true_positives(cls, text):
    assert cls in classify({"a": text})


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_flagged(text):
    assert classify({"a": text}) == []


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
