"""The strict JSON reader: what it refuses, and that its fast paths refuse exactly what the
full checks refuse (session 10 made the depth walk and the key check run only when needed)."""

from __future__ import annotations

import json
import random

import pytest

from sidecar.strict_json import MAX_DEPTH, StrictJsonError, _too_deep, loads_strict


def _nest(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


@pytest.mark.parametrize("encode", [False, True])
def test_s10_nesting_at_the_limit_reads_and_one_more_is_refused(encode):
    ok, deep = _nest(MAX_DEPTH), _nest(MAX_DEPTH + 1)
    assert loads_strict(ok.encode() if encode else ok, "x") is not None
    with pytest.raises(StrictJsonError, match="nested more than 64 levels deep"):
        loads_strict(deep.encode() if encode else deep, "x")


def test_s10_brackets_inside_strings_do_not_make_a_flat_document_deep():
    text = json.dumps({"text": "{[" * 500})
    assert loads_strict(text, "x") == {"text": "{[" * 500}


def test_s10_a_deep_document_hidden_among_string_brackets_is_still_refused():
    text = '{"pad": "' + "[" * 10 + '", "deep": ' + _nest(MAX_DEPTH) + "}"
    with pytest.raises(StrictJsonError, match="nested more than"):
        loads_strict(text, "x")


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"a": {"b": 1, "c": 2, "b": 3}}', '[{"k": 1}, {"k": 1, "k": 1}]'],
)
def test_s10_a_repeated_key_is_refused_at_any_level(text):
    with pytest.raises(StrictJsonError, match="repeats the key"):
        loads_strict(text, "x")
    with pytest.raises(StrictJsonError, match=r"^x repeats a key$"):
        loads_strict(text, "x", quote=False)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_s10_a_lone_surrogate_escape_is_refused_in_every_encoding_json_reads(encoding):
    """Before: bytes were searched as UTF-8, so UTF-16/32 text hid the escape and a lone
    surrogate reached policy, relay and audit."""
    with pytest.raises(StrictJsonError, match="lone UTF-16 surrogate"):
        loads_strict('{"a": "\\ud800"}'.encode(encoding), "x")
    pair = '{"a": "\\ud83d\\ude00"}'.encode(encoding)
    assert loads_strict(pair, "x") == {"a": "\U0001f600"}


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "1e400", '{"a": -Infinity}'])
def test_s10_not_json_numbers_are_refused(text):
    with pytest.raises(StrictJsonError):
        loads_strict(text, "x")


def test_s10_fast_paths_agree_with_the_full_checks_on_random_documents():
    rng = random.Random(10)

    def doc(depth: int) -> object:
        roll = rng.random()
        if depth > 70 or roll < 0.3:
            return rng.choice([1, "s{[", None, True, 2.5])
        if roll < 0.65:
            return [doc(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": doc(depth + 1) for i in range(rng.randint(0, 3))}

    seen_deep = seen_flat = 0
    for _ in range(400):
        value = doc(1) if rng.random() < 0.5 else [doc(1)] * 1
        text = json.dumps(value)
        if _too_deep(value):
            seen_deep += 1
            with pytest.raises(StrictJsonError, match="nested more than"):
                loads_strict(text, "x")
        else:
            seen_flat += 1
            assert loads_strict(text, "x") == value
            assert loads_strict(text.encode(), "x") == value
    assert seen_deep and seen_flat


@pytest.mark.parametrize(
    "raw",
    [
        b'"\xed\xa0\x80"',  # UTF-8 bytes of U+D800 (CESU-8): not UTF-8
        b'{"a": "\xed\xbf\xbf"}',
        "\ud800".encode("utf-16-le", "surrogatepass").join([b'"\x00', b'"\x00']),
        "\udc00".encode("utf-16-be", "surrogatepass").join([b'\x00"', b'\x00"']),
        b'"\x00\x00\x00' + (0xD800).to_bytes(4, "little") + b'"\x00\x00\x00',
    ],
)
def test_review_s10_strict_a_raw_surrogate_in_bytes_is_refused(raw):
    """json.loads decodes bytes with ``surrogatepass``: a raw surrogate code unit read as text
    that no relay or log could encode (a 500 at the MCP endpoint)."""
    with pytest.raises(StrictJsonError, match="not valid JSON"):
        loads_strict(raw, "x")


def test_review_s10_strict_a_surrogate_code_unit_in_a_str_is_refused():
    with pytest.raises(StrictJsonError, match="lone UTF-16 surrogate"):
        loads_strict('{"a": "\ud800"}', "x")
    assert loads_strict('{"a": "\U0001f600"}', "x") == {"a": "\U0001f600"}
