"""The embedded engine's input: built node by node, exact, and numbers rego-cpp would compare
differently from OPA refused before policy (``input_unrepresentable``)."""

from __future__ import annotations

import json
import random

import pytest

from sidecar.policy import DecisionError, EmbeddedEngine


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    (root / "p.rego").write_text(
        "package p\n\nimport rego.v1\n\nout := input\n\n"
        "above := input.v > input.limit if {\n\tis_number(input.v)\n\tis_number(input.limit)\n}\n\n"
        "same := input.v == input.limit\n"
    )
    return {
        q: EmbeddedEngine.from_dir(root, f"data.p.{q}", workers=1) for q in ("out", "above", "same")
    }


def _eval(engine, doc):
    return engine.evaluate_sync(doc).value


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (100.00000000000001, "action.arguments.amount"),  # R2: 17 significant digits
        (123456789.12345679, "action.arguments.amount"),
        (5e-324, "action.arguments.amount"),  # R4: subnormal
        (1.7976931348623157e308, "action.arguments.amount"),  # R4: the largest double
        (float("inf"), "action.arguments.amount"),
        (2**63, "action.arguments.amount"),
        (2**53 + 1, "action.arguments.amount"),  # issue 30: divided in a double
        (-(2**63) - 1, "action.arguments.amount"),
        ([1, 2, 0.30000000000000004], "action.arguments.amount[2]"),
    ],
)
def test_numbers_the_engine_would_misjudge_are_refused_with_their_path(echo, value, path):
    doc = {"action": {"arguments": {"amount": value}}}
    with pytest.raises(DecisionError) as caught:
        _eval(echo["out"], doc)
    assert caught.value.code == "input_unrepresentable"
    assert f"input.{path} " in str(caught.value)
    assert repr(value) not in str(caught.value)  # a path, never the value


def test_admissible_floats_round_trip_and_compare_exactly(echo):
    """Floats of at most 15 significant digits over the whole admissible range: read back
    unchanged, and a neighbour one unit in the 15th digit away compares as it should."""
    rng = random.Random(7)
    for exponent in range(-307, 308, 3):
        mantissa = float(f"{rng.uniform(1, 9):.14f}")
        value = float(f"{mantissa:.14f}e{exponent}")
        if not 1e-307 <= value <= 1e308:
            continue
        neighbour = float(f"{mantissa + 1e-14:.14f}e{exponent}")
        assert _eval(echo["out"], {"v": value}) == {"v": value}
        assert _eval(echo["above"], {"v": neighbour, "limit": value}) is True, (value, neighbour)
        assert _eval(echo["above"], {"v": value, "limit": neighbour}) is False
        assert _eval(echo["same"], {"v": value, "limit": value}) is True


@pytest.mark.parametrize(
    "value",
    ['a"b', "\\", "\x00z", "\u2028", "😀", "tab\tnl\n", 1e-7, 0.1, -0.0, 12.5, 2**53],
)
def test_strings_and_numbers_round_trip_on_the_node_and_the_term_path(echo, value):
    # A float six decimals cannot hold (1e-7) sends the whole document through the JSON term.
    for doc in ({'k"ey': value}, {'k"ey': value, "force_term": 1e-7}):
        assert _eval(echo["out"], doc) == json.loads(json.dumps(doc))


def test_mapping_and_sequence_subclasses_and_enums_are_read_as_json_reads_them(echo):
    """What json.dumps accepts, the node builder accepts too (tuples, OrderedDict, str/int
    enums): a decision must never fail on the Python type of a well-formed input."""
    import collections
    import enum

    class Mode(enum.StrEnum):
        READ = "read"

    class Level(enum.IntEnum):
        TWO = 2

    doc = {
        "t": ("a", 1),
        "o": collections.OrderedDict([("k", "v")]),
        "e": Mode.READ,
        "i": Level.TWO,
    }
    assert _eval(echo["out"], doc) == {"t": ["a", 1], "o": {"k": "v"}, "e": "read", "i": 2}
