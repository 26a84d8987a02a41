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


def _one_by_one_classify(value: object) -> list[str]:
    """classify as it was before the combined pre-search: every detector on every string."""
    from sidecar import classify as module

    found = set()
    for text in module._strings(value):
        for detector in module.DETECTORS:
            spans = [m.span() for m in detector.matches(text)]
            if spans:
                found.add(detector.name)
                text = module._blank(text, spans)
    return sorted(found)


def _one_by_one_redact(text: str, classes: list[str]) -> str:
    from sidecar.classify import DETECTORS

    for detector in (d for d in DETECTORS if d.name in classes):
        text = detector.pattern.sub(
            lambda m, d=detector: f"[REDACTED:{d.name}]" if d.valid(m.group(0)) else m.group(0),
            text,
        )
    return text


def test_issue34_the_combined_pre_search_changes_no_answer() -> None:
    """The one search that skips strings no detector can match is exact: over every positive,
    near miss, their pieces, joins and hostile mixes, classify and redact (each class alone and
    all together) answer as the detectors run one by one do."""
    import random

    from sidecar.classify import DETECTORS

    rng = random.Random(34)
    pieces = [text for _, text in POSITIVES] + NEAR_MISSES
    corpus = list(pieces)
    for text in pieces:
        corpus += [text[: len(text) // 2], text[len(text) // 2 :], text.upper(), f"x{text}x"]
    for _ in range(400):
        picked = rng.sample(pieces, 3)
        corpus.append(rng.choice(["", " ", "\n", "-", "@", "\x00"]).join(picked))
    corpus += ["", "\x00" * 40, "\ud800 lone surrogate 4111 1111 1111 1111", "é" * 300]
    names = [d.name for d in DETECTORS]
    for text in corpus:
        assert classify(text) == _one_by_one_classify(text), text
        assert classify({text: [text, 7]}) == _one_by_one_classify({text: [text, 7]}), text
        for classes in [names, *([n] for n in names)]:
            assert redact(text, classes) == _one_by_one_redact(text, classes), (text, classes)


def test_issue34_a_calls_own_detectors_are_not_kept() -> None:
    """Detectors made for one call (sidecar/relay/scrub.py: the call's secrets) are never
    combined into a remembered pattern: nothing of theirs outlives the call, and they still
    redact and classify."""
    import re

    from sidecar import classify as module

    secret = "s3cr3t-" + "q" * 24
    own = module.Detector("credential", re.compile(re.escape(secret)))
    kept = dict(module._COMBINED)
    assert redact(f"echo {secret}", ["credential"], (own,)) == "echo [REDACTED:credential]"
    assert classify(f"echo {secret}", (own, *module.DETECTORS)) == ["credential"]
    mixed = redact(f"{secret} jane@mail.example", ["credential", "email"], (own, *module.DETECTORS))
    assert mixed == "[REDACTED:credential] [REDACTED:email]"
    assert kept == module._COMBINED  # never combined, nothing of theirs kept
    builtin = {id(d) for d in module.DETECTORS}
    assert all(set(ids) <= builtin for ids in module._COMBINED)


def test_review_s11_a_held_pem_block_costs_linear_work_however_it_is_cut():
    """A stream that opens ``-----BEGIN`` and drips 1 kB pieces (the review's probe: 2,048
    pieces cost 21 s of CPU, every piece searching all the held text) is searched a bounded
    number of times per character; the held block never grows past the cap, and the stream
    answers the text before it and one marker for the block."""
    from sidecar.classify import PEM_HOLD_MAX, StreamRedactor

    redactor = StreamRedactor(["private_key", "secret"])
    out = redactor.feed("intro AKIAIOSFODNN7EXAMPLE then -----BEGIN ")
    total = 0
    for _ in range(2048):
        out += redactor.feed("A" * 1023 + "\n")
        total += 1024
        assert len(redactor._pending) <= PEM_HOLD_MAX + 2048
    out += redactor.flush()
    assert redactor.scanned <= 8 * total, redactor.scanned
    assert out == "intro [REDACTED:secret] then [REDACTED:private_key]"


def test_review_s11_after_a_dropped_block_its_end_resumes_the_stream():
    """Past the cap the block is replaced and dropped up to its END (found even when split
    across pieces); what follows is redacted as ever."""
    from sidecar.classify import PEM_HOLD_MAX, StreamRedactor

    text = (
        "a -----BEGIN PRIVATE KEY-----\n"
        + "M" * (PEM_HOLD_MAX + 10)
        + "\n-----END PRIVATE KEY----- then mail bob@example.org and more text"
    )
    for piece in (1, 7, 1000, len(text)):
        redactor = StreamRedactor(["private_key", "email"], hold=64)
        out = "".join(redactor.feed(text[i : i + piece]) for i in range(0, len(text), piece))
        out += redactor.flush()
        assert out == "a [REDACTED:private_key] then mail [REDACTED:email] and more text", piece


def test_review_s11_a_stream_redactor_answers_as_redact_does_for_any_cuts():
    """Held blocks are searched again only as they grow: the released text is the same as
    redacting the whole text at once, for keys, certificates and secrets cut anywhere."""
    import random

    from sidecar.classify import StreamRedactor

    rng = random.Random(11)
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"
    cert = "-----BEGIN CERTIFICATE-----\nMIIB" + "x" * 3000 + "\n-----END CERTIFICATE-----"
    parts = [pem, cert, "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "bob@example.org", " text "]
    classes = ["private_key", "secret", "email"]
    for _ in range(60):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(1, 8)))
        redactor = StreamRedactor(classes, hold=64)
        out, i = "", 0
        while i < len(text):
            step = rng.choice([1, 3, 17, 200, 5000])
            out += redactor.feed(text[i : i + step])
            i += step
        out += redactor.flush()
        assert out == redact(text, classes), text[:80]


@pytest.mark.parametrize(
    "program_id",
    [
        "m-140234567891235",  # like CPython's id() of an object: 15 digits
        "1733385600007",  # a millisecond timestamp
        "1234567890123452",  # a counter
        "msg 1800000000000000002",  # a snowflake id
        "9900000000000002",
        "0000000000000000",
    ],
)
def test_review_s11_program_made_numbers_are_not_card_numbers(program_id):
    """Ids in A2A identifier positions are classified now: a Luhn-valid id that starts as no
    card network's numbers do is no card (before: one numeric id in ten was a
    "credit_card", and the baseline denied the call)."""
    digits = [int(c) for c in program_id if c.isdigit()]
    doubled = [d * 2 - 9 if d > 4 else d * 2 for d in digits[-2::-2]]
    assert (sum(digits[-1::-2]) + sum(doubled)) % 10 == 0  # Luhn-valid: the rule is what decides
    assert classify(program_id) == []
    assert redact(program_id, ["credit_card"]) == program_id


def test_review_s11_every_card_network_is_still_a_card():
    for number in (
        "4111 1111 1111 1111",  # Visa
        "5555555555554444",  # Mastercard
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # Amex
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
    ):
        assert classify(f"card {number}") == ["credit_card"], number
