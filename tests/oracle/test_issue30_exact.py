"""Issue 30, deliverable 2: integers beyond 2^53 are exact or refused, against OPA's engine.

rego-cpp divides integers in doubles and answers ``==`` on large ones undefined (OPA: exact,
false). ``input.time_ns`` is always 19 digits: arithmetic and equality on it (or on
``time.now_ns()``, or a large literal, or a variable holding one) are refused at load
(``inexact-integer``), and so are they on ``input.approval.approved_at_ns``, the other clock the
sidecar gives policy; comparing either with an integer literal is exact on both engines. Any other
input integer beyond 2^53 is refused per call (``input_unrepresentable``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.policy import DecisionError, EmbeddedEngine
from sidecar.policy.portability import PortabilityError
from tests.oracle.test_semantics import _on_opa, _raw_rego_cpp

T = 1_764_999_999_999_999_999  # one nanosecond before 1765000000 s

REFUSED = {
    "division_then_compare": "r if input.time_ns / 1000000000 >= 1765000000",
    "through_a_variable": "r if {\n\tt := input.time_ns\n\ts := t / 1000000000\n\ts > 5\n}",
    "in_a_rule_head": "_s := input.time_ns / 1000000000\n\nr if _s > 5",
    "equality": "r if input.time_ns == 1764999999999999998",
    "not_equal": "r if input.time_ns != 1764999999999999998",
    "now_ns": "r if time.now_ns() / 1000000000 > 5",
    "multiplication_past_64_bits": "r if input.time_ns * 10 > 5",
    "a_large_literal": "r if input.x / 9007199254740993 > 0",
    "approval_clock": "r if input.approval.approved_at_ns / 1000000000 > 5",
}


def _write(tmp: Path, body: str) -> Path:
    (tmp / "sem.rego").write_text(f"package sem\n\n{body}\n")
    return tmp


@pytest.mark.parametrize("body", REFUSED.values(), ids=list(REFUSED))
def test_item30_r5_arithmetic_on_big_integers_is_refused_at_load(opa_available, tmp_path, body):
    with pytest.raises(PortabilityError, match="inexact-integer"):
        EmbeddedEngine.from_dir(_write(tmp_path, body), "data.sem.r", workers=1)


def test_item30_r5_the_division_really_differs(opa_available):
    """Why: the not-before check is true on rego-cpp and false on OPA (more permissive)."""
    doc = {"time_ns": T}
    expr = "floor(input.time_ns / 1000000000)"
    assert _on_opa(expr, doc) == ("value", 1764999999)
    assert _raw_rego_cpp(expr, doc) == ("value", 1765000000)
    expr = "input.time_ns == 1764999999999999998"
    assert _on_opa(expr, doc) == ("value", False)
    assert _raw_rego_cpp(expr, doc) == ("undefined", None)


@pytest.mark.parametrize("time_ns", [T, T + 1, 1_765_000_000_000_000_000, 0, -T])
def test_item30_r5_comparing_time_ns_with_a_literal_is_exact(opa_available, tmp_path, time_ns):
    body = (
        'r := {\n\t"nb": input.time_ns >= 1765000000000000000,\n\t"lt": input.time_ns < T\n}'
        " if is_number(input.time_ns)"
    )
    body = body.replace("T", str(T + 1))
    engine = EmbeddedEngine.from_dir(_write(tmp_path, body), "data.sem.r", workers=1)
    got = engine.evaluate_sync({"time_ns": time_ns}).value
    want = _on_opa(
        f'{{"nb": input.time_ns >= 1765000000000000000, "lt": input.time_ns < {T + 1}}}',
        {"time_ns": time_ns},
    )
    assert json.dumps(("value", got), sort_keys=True) == json.dumps(want, sort_keys=True)
    engine.close()


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"n": 2**53 + 1}, "input.n"),
        ({"n": -(2**53) - 1}, "input.n"),
        ({"a": {"time_ns": T}}, "input.a.time_ns"),  # only the top-level time_ns is exempt
        ({"a": [1, 2, T]}, "input.a[2]"),
        ({"time_ns": 2**64}, "input.time_ns"),  # beyond 64 bits: refused even there
        ({"approval": {"id": T}}, "input.approval.id"),  # only the approval's clock is exempt
        ({"a": {"approval": {"approved_at_ns": T}}}, "input.a.approval.approved_at_ns"),
    ],
)
def test_item30_r5_other_big_integers_are_refused_per_call(opa_available, tmp_path, doc, path):
    engine = EmbeddedEngine.from_dir(_write(tmp_path, "r := true"), "data.sem.r", workers=1)
    with pytest.raises(DecisionError) as refused:
        engine.evaluate_sync(doc)
    assert refused.value.code == "input_unrepresentable"
    assert f"{path} is a number" in str(refused.value)
    assert str(doc) not in str(refused.value) and str(T) not in str(refused.value)
    engine.close()


@pytest.mark.parametrize(
    "doc",
    [
        {"n": 2**53},
        {"n": -(2**53)},
        {"time_ns": T},
        {"time_ns": -(2**63)},
        {"time_ns": 1},
        # an approved call carries the sidecar's approval clock: never refused (the demo's retry)
        {"time_ns": T, "approval": {"id": "ap-1", "approved_at_ns": T - 5}},
    ],
)
def test_item30_r5_exact_integers_still_pass(opa_available, tmp_path, doc):
    engine = EmbeddedEngine.from_dir(_write(tmp_path, "r := input"), "data.sem.r", workers=1)
    assert engine.evaluate_sync(doc).value == doc
    engine.close()


@pytest.mark.parametrize("time_ns", ["1764999999999999999", 1.764e18, True, None, [T]])
def test_item30_r5_time_ns_of_the_wrong_type_is_not_exempt(opa_available, tmp_path, time_ns):
    engine = EmbeddedEngine.from_dir(_write(tmp_path, "r := input"), "data.sem.r", workers=1)
    if isinstance(time_ns, list):
        with pytest.raises(DecisionError, match=r"input\.time_ns\[0\]"):
            engine.evaluate_sync({"time_ns": time_ns})
    else:
        assert engine.evaluate_sync({"time_ns": time_ns}).value == {"time_ns": time_ns}
    engine.close()
