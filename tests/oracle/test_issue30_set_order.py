"""Issue 30, set iteration order: exact or refused, against OPA's engine.

OPA iterates sets and objects in sorted order, rego-cpp in insertion order. Objects from the
input and data are now handed to rego-cpp with sorted keys (exact); order a policy creates
from a set (or an object it built) is refused at load (``set-order``, on OPA's AST), except in
the decision's unordered lists (``reasons``, ``redact``, ...), which the sidecar sorts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from regopy import Interpreter

from sidecar.policy import EmbeddedEngine
from sidecar.policy._rego import query_once
from sidecar.policy._rego_input import set_input
from sidecar.policy.ast_set_order import UNORDERED_KEYS
from sidecar.policy.check import check_policy
from sidecar.policy.portability import PortabilityError
from tests.conftest import REGO
from tests.oracle.conftest import Opa

MIXED = [
    {"groups": ["support", "Ops", "b", "a", "Zeta"]},
    {"groups": ["z", "Y", "x", "É", "e", "ä"]},
    {"groups": ["b", "a", "c"]},
]

# Each gave another answer on rego-cpp than on OPA for some input above, and loaded before.
ORDER_CASES = {
    "issue_example_first_of_a_set": "r := [g | some g in {x | some x in input.groups}][0]",
    "concat_over_a_set": 'r := concat(",", {x | some x in input.groups})',
    "contains_rule_into_an_array": (
        "_s contains x if some x in input.groups\n\nr := [x | some x in _s]"
    ),
    "ref_iteration": "_s contains x if some x in input.groups\n\nr := [x | _s[x]]",
    "wildcard_iteration": "_s contains x if some x in input.groups\n\nr := [x | x := _s[_]]",
    "through_a_variable": "r := [x | s := {y | some y in input.groups}; some x in s]",
    "set_literal": 'r := [x | some x in {"b", "a", "c"}]',
    "set_difference": '_s contains x if some x in input.groups\n\nr := [x | some x in _s - {"q"}]',
    "set_intersection": (
        "_s contains x if some x in input.groups\n\n"
        'r := [x | some x in _s & {"Ops", "support", "a"}]'
    ),
    "object_literal": 'r := [k | some k; {"b": 1, "a": 2}[k]]',
    "object_comprehension": "_o := {g: 1 | some g in input.groups}\n\nr := [k | _o[k]]",
    "set_into_a_function": (
        "f(c) := [x | some x in c]\n\n_s contains x if some x in input.groups\n\nr := f(_s)"
    ),
    "function_returning_a_set": (
        "f(c) := {x | some x in c}\n\nr := [x | some x in f(input.groups)]"
    ),
    "set_inside_a_list": (
        "_s contains x if some x in input.groups\n\nr := [x | some s in [_s]; some x in s]"
    ),
    "unordered_slot_indexed_again": (
        '_d := {"reasons": [x | some x in _s]}\n\n'
        "_s contains x if some x in input.groups\n\nr := _d.reasons[0]"
    ),
    "unordered_key_in_a_body": (
        "_s contains x if some x in input.groups\n\n"
        'r := y if {\n\to := {"reasons": [x | some x in _s]}\n\ty := o.reasons[0]\n}'
    ),
}

# Order-free uses of sets, and arrays from input/data: accepted, and equal on both engines.
ACCEPTED = {
    "array_from_an_array": "r := [x | some x in input.groups]",
    "count_of_a_set": "_s contains x if some x in input.groups\n\nr := count(_s)",
    "membership": '_s contains x if some x in input.groups\n\nr := "Ops" in _s',
    "set_to_set": "_s contains x if some x in input.groups\n\nr := {x | some x in _s}",
    "set_printed": 'r := sprintf("%v", [{x | some x in input.groups}])',
    "set_output": "r := {x | some x in input.groups}",
    "unordered_decision_list": (
        "_s contains x if some x in input.groups\n\n"
        'r := {"effect": "deny", "reasons": [x | some x in _s]}'
    ),
    "input_object_keys": "r := [k | some k; input.obj[k]]",
    "data_object_keys": "r := [k | some k; data.sem.table[k]]",
    "nested_input_object": "r := [[k, v] | some k; v := input.obj.inner[k]]",
}

OBJ = {"b": 1, "a": 2, "Z": 3, "é": 4, "ä": 5, "inner": {"y": 1, "X": 2}}
DATA = {"table": {"zeta": 1, "Alpha": 2, "beta": 3, "É": 4}}


def _unordered(value: object) -> object:
    """The decision's unordered lists sorted, as ``parse_decision`` sorts them."""
    if isinstance(value, dict):
        return {k: sorted(v) if k in UNORDERED_KEYS else _unordered(v) for k, v in value.items()}
    return value


def _write(root: Path, body: str, data: dict | None = None) -> Path:
    (root / "sem").mkdir(parents=True, exist_ok=True)
    (root / "sem" / "sem.rego").write_text(f"package sem\n\n{body}\n")
    (root / "sem" / "data.json").write_text(json.dumps(data or {}))
    return root


def _opa(body: str, doc: dict, data: dict | None = None) -> object:
    opa = Opa([("sem/sem.rego", f"package sem\n\n{body}\n")], {"sem": data or {}})
    try:
        return opa.query("data.sem.r", doc)
    finally:
        opa.close()


@pytest.mark.parametrize("body", ORDER_CASES.values(), ids=list(ORDER_CASES))
def test_item1_set_order_is_refused_at_load(opa_available, tmp_path, body):
    root = _write(tmp_path / "p", body)
    with pytest.raises(PortabilityError, match="set-order"):
        EmbeddedEngine.from_dir(root, "data.sem.r", workers=1)
    findings = check_policy(root, "data.sem.r")
    assert "set-order" in {f.rule for f in findings}, [str(f) for f in findings]


@pytest.mark.parametrize("body", ORDER_CASES.values(), ids=list(ORDER_CASES))
def test_item1_set_order_really_differs_on_mixed_case_input(opa_available, body):
    """Why each is refused: OPA and rego-cpp (without the load checks) answer differently."""
    differs = [
        json.dumps(_opa(body, doc), sort_keys=True) != json.dumps(_raw(body, doc), sort_keys=True)
        for doc in MIXED
    ]
    assert any(differs), body


def _raw(body: str, doc: dict) -> tuple[bool, object]:
    """``data.sem.r`` on rego-cpp without the sidecar's load checks."""
    interp = Interpreter()
    interp.log_level = 0
    interp.strict_built_in_errors = True
    interp.add_module("sem/sem.rego", f"package sem\n\n{body}\n")
    set_input(interp._impl, interp.set_input_term, doc)
    return query_once(interp, "data.sem.r")


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=list(ACCEPTED))
def test_item1_order_free_uses_load_and_decide_as_opa(opa_available, tmp_path, body):
    root = _write(tmp_path / "p", body, DATA)
    engine = EmbeddedEngine.from_dir(root, "data.sem.r", workers=1)
    try:
        for doc in [{**m, "obj": OBJ} for m in MIXED]:
            result = engine.evaluate_sync(doc)
            want = _opa(body, doc, DATA)
            got = (result.defined, _unordered(result.value))
            want = (want[0], _unordered(want[1]))
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), body
    finally:
        engine.close()


def test_item1_input_and_data_objects_iterate_in_opas_order(opa_available, tmp_path):
    """Exact, not refused: the keys reach rego-cpp sorted (before: b, a, Z vs OPA Z, a, b)."""
    body = (
        'r := {"in": [k | some k; input.obj[k]], "data": [k | some k; data.sem.table[k]], '
        '"deep": [k | some k; input.obj.inner[k]], "first": [k | some k; input.obj[k]][0]}'
    )
    root = _write(tmp_path / "p", body, DATA)
    engine = EmbeddedEngine.from_dir(root, "data.sem.r", workers=1)
    try:
        doc = {"obj": OBJ, "f": 1e-7}  # a float the node API rounds: the JSON-term path too
        for input_doc in (doc, {"obj": OBJ}):
            result = engine.evaluate_sync(input_doc)
            assert result.value == _opa(body, input_doc, DATA)[1]
        assert result.value["first"] == "Z"
    finally:
        engine.close()


def test_item1_the_shipped_policy_is_not_refused(opa_available):
    """Its reasons and redact lists are built from sets, in the contract's unordered slots."""
    assert [f for f in check_policy(REGO, "data.agentsidecar.authz.decision")] == []
    EmbeddedEngine.from_dir(REGO, "data.agentsidecar.authz.decision", workers=1).close()


def test_item1_hostile_modules_are_vetted_whole(opa_available, tmp_path):
    """Deep nesting, a set rule defined in another file, and a 1,500-rule module."""
    nested = "".join(f"{{y{i} | some y{i} in " for i in range(10))
    deep = f"r := [x | some x in {nested}input.groups{'}' * 10}]"
    root = _write(tmp_path / "deep", deep)
    with pytest.raises(PortabilityError, match="set-order"):
        EmbeddedEngine.from_dir(root, "data.sem.r", workers=1)
    split = _write(tmp_path / "split", "r := [x | some x in _s]")
    (split / "sem" / "other.rego").write_text(
        "package sem\n\n_s contains x if some x in input.groups\n"
    )
    with pytest.raises(PortabilityError, match="set-order"):
        EmbeddedEngine.from_dir(split, "data.sem.r", workers=1)
    many = "\n".join(
        f"_s{i} contains x if some x in input.g{i}\n\n"
        f'd{i} := {{"reasons": [x | some x in _s{i}]}}\n\nl{i} := [x | some x in input.a{i}]'
        for i in range(500)
    )
    EmbeddedEngine.from_dir(_write(tmp_path / "many", many + "\n\nr := 1"), "data.sem.r").close()
