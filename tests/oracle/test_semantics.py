"""Semantics suite: every built-in the embedded engine accepts, on small policies, against OPA.

Each case is ``r := <expression>`` evaluated through the sidecar's own engine path
(``EmbeddedEngine``: its input builder, its load-time checks) and by OPA with the same input;
value, undefinedness and failure must agree. Cases lean on the edges: non-ASCII strings, empty
and negative values, the false side of every ``is_*``. The built-ins that differ
(``portability.DIVERGENT_BUILTINS``) are each shown differing here, and refused at load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from regopy import Interpreter

from sidecar.policy import DecisionError, EmbeddedEngine, UnsupportedBuiltinError
from sidecar.policy._rego import query_once
from sidecar.policy._rego_input import set_input
from sidecar.policy.portability import DIVERGENT_BUILTINS, VERIFIED_BUILTINS
from tests.oracle.conftest import Opa, OpaError

NS = 1_700_000_000_123_456_789

# (built-in, expression, input)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("abs", "abs(input.n)", {"n": -2.5}),
    ("abs", "abs(input.n)", {"n": 0}),
    ("array.concat", "array.concat(input.a, input.b)", {"a": [1], "b": ["x", None]}),
    ("array.concat", "array.concat(input.a, input.b)", {"a": [], "b": []}),
    ("array.reverse", "array.reverse(input.a)", {"a": [1, "b", None]}),
    ("array.slice", "array.slice(input.a, 1, 9)", {"a": [1, 2, 3]}),
    ("array.slice", "array.slice(input.a, -1, 2)", {"a": [1, 2, 3]}),
    ("array.slice", "array.slice(input.a, 2, 1)", {"a": [1, 2, 3]}),
    ("base64.encode", "base64.encode(input.s)", {"s": "hé 中"}),
    ("base64url.decode", "base64url.decode(input.s)", {"s": "Pz8-"}),
    ("base64url.encode", "base64url.encode(input.s)", {"s": "??>"}),
    ("concat", 'concat(",", input.a)', {"a": ["x", "é"]}),
    ("concat", 'concat("", input.a)', {"a": []}),
    ("contains", 'contains(input.s, "ll")', {"s": "héllo"}),
    ("contains", 'contains(input.s, "")', {"s": ""}),
    ("count", "count(input.a)", {"a": [1, 2, 3]}),
    ("count", "count(input.s)", {"s": "héllo 中"}),
    ("count", "count(input.o)", {"o": {"a": 1}}),
    ("count", "count(input.s)", {"s": 5}),
    ("crypto.sha256", "crypto.sha256(input.s)", {"s": "é"}),
    ("endswith", 'endswith(input.s, "lo")', {"s": "héllo"}),
    ("glob.match", 'glob.match("a.*", ["."], input.s)', {"s": "a.b"}),
    ("glob.match", 'glob.match("a.*", ["."], input.s)', {"s": "a.b.c"}),
    ("glob.match", 'glob.match("a.**", ["."], input.s)', {"s": "a.b.c"}),
    ("glob.match", 'glob.match("t?ckets.*", ["."], input.s)', {"s": "tİckets.get"}),
    ("glob.match", 'glob.match("*.get", [], input.s)', {"s": "é.get"}),
    ("hex.decode", "hex.decode(input.s)", {"s": "616263"}),
    ("indexof", 'indexof(input.s, "l")', {"s": "héllo"}),
    ("indexof", 'indexof(input.s, "z")', {"s": "héllo"}),
    ("intersection", "intersection({{1, 2}, {2, 3}})", {}),
    ("is_array", "is_array(input.v)", {"v": []}),
    ("is_array", "is_array(input.v)", {"v": {}}),
    ("is_boolean", "is_boolean(input.v)", {"v": False}),
    ("is_boolean", "is_boolean(input.v)", {"v": 0}),
    ("is_null", "is_null(input.v)", {"v": None}),
    ("is_null", "is_null(input.v)", {"v": False}),
    ("is_number", "is_number(input.v)", {"v": 1.5}),
    ("is_number", "is_number(input.v)", {"v": "1"}),
    ("is_object", "is_object(input.v)", {"v": {}}),
    ("is_object", "is_object(input.v)", {"v": []}),
    ("is_string", "is_string(input.v)", {"v": "x"}),
    ("is_string", "is_string(input.v)", {"v": 1}),
    ("numbers.range", "numbers.range(1, 4)", {}),
    ("numbers.range", "numbers.range(3, 1)", {}),
    ("object.filter", 'object.filter(input.o, ["x"])', {"o": {"x": 1, "y": 2}}),
    ("object.get", 'object.get(input.o, "k", "default")', {"o": {}}),
    ("object.get", 'object.get(input.o, "k", "default")', {"o": {"k": None}}),
    ("object.get", 'object.get(input.o, ["a", "b"], 0)', {"o": {"a": {"b": 2}}}),
    ("object.keys", "object.keys(input.o)", {"o": {"b": 1, "a": 2}}),
    ("object.remove", 'object.remove(input.o, ["x"])', {"o": {"x": 1, "y": 2}}),
    ("replace", 'replace(input.s, "é", "e")', {"s": "éXé"}),
    ("round", "round(input.n)", {"n": 2.5}),
    ("round", "round(input.n)", {"n": -2.5}),
    ("semver.is_valid", "semver.is_valid(input.v)", {"v": "1.0.0-rc.1"}),
    ("semver.is_valid", "semver.is_valid(input.v)", {"v": 1}),
    ("split", 'split(input.s, ".")', {"s": "a.b..é"}),
    ("split", 'split(input.s, ".")', {"s": ""}),
    ("sprintf", 'sprintf("%v %v", [input.a, input.b])', {"a": "x", "b": "é"}),
    (
        "sprintf",
        'sprintf("%v|%v|%v|%v", [input.a, input.b, input.c, input.d])',
        {"a": 0.1, "b": 1e21, "c": 100.5, "d": 1e-7},
    ),
    ("sprintf", 'sprintf("%v", [input.a])', {"a": {"b": [1, "x", None, True]}}),
    ("sprintf", 'sprintf("%v and %v%%", [input.a, input.b])', {"a": 100, "b": -3}),
    ("startswith", 'startswith(input.s, "hé")', {"s": "héllo"}),
    ("strings.any_prefix_match", 'strings.any_prefix_match(input.s, ["a", "b"])', {"s": "abc"}),
    ("strings.any_suffix_match", 'strings.any_suffix_match(input.s, ["é"])', {"s": "café"}),
    ("strings.count", 'strings.count(input.s, "an")', {"s": "banana"}),
    ("strings.replace_n", 'strings.replace_n({"a": "1", "é": "2"}, input.s)', {"s": "aé"}),
    ("strings.reverse", "strings.reverse(input.s)", {"s": "héllo"}),
    ("substring", "substring(input.s, 1, 3)", {"s": "héllo"}),
    ("substring", "substring(input.s, 1, -1)", {"s": "héllo"}),
    ("substring", "substring(input.s, 9, 2)", {"s": "héllo"}),
    # `sum` of what is not proven integers is refused (divergent-arithmetic, review R1)
    ("sum", "sum([count(input.a), 2, -7])", {"a": [1, 2.5, 3]}),
    ("sum", "sum([count(x) | some x in input.a])", {"a": [[1], [], [2, 3]]}),
    ("time.add_date", "time.add_date(input.time_ns, 0, 1, 0)", {"time_ns": NS}),
    ("time.clock", "time.clock(input.time_ns)", {"time_ns": NS}),
    ("time.clock", 'time.clock([input.time_ns, "Europe/Berlin"])', {"time_ns": NS}),
    ("time.date", "time.date(input.time_ns)", {"time_ns": NS}),
    ("time.now_ns", "is_number(time.now_ns())", {}),
    ("time.weekday", "time.weekday(input.time_ns)", {"time_ns": NS}),
    ("trim", 'trim(input.s, "x")', {"s": "xxaxx"}),
    ("trim_left", 'trim_left(input.s, "ab")', {"s": "abcab"}),
    ("trim_prefix", 'trim_prefix(input.s, "a.")', {"s": "a.b"}),
    ("trim_right", 'trim_right(input.s, "ab")', {"s": "abcab"}),
    ("trim_suffix", 'trim_suffix(input.s, ".b")', {"s": "a.b"}),
    (
        "type_name",
        "[type_name(input.a), type_name(input.b), type_name(input.c)]",
        {"a": 1, "b": "x", "c": None},
    ),
    ("union", "union({{1}, {2}})", {}),
    ("units.parse_bytes", "units.parse_bytes(input.s)", {"s": "10KiB"}),
    # Operators are built-ins too (plus, eq, lt, ...): the comparisons the baseline relies on.
    # `+ - *` on integers (exact); `/`, `%` and non-integers are refused at load
    # (divergent-arithmetic, tests/oracle/test_s12_arith.py).
    ("operator", "count(input.a) + 4000000000 - count(input.b)", {"a": [1], "b": [2, 3]}),
    ("operator", "count(input.a) * 4000000000 * 4000000000", {"a": [1, 2]}),
    ("operator", "input.a == input.b", {"a": 1, "b": 1.0}),
    ("operator", "input.a != input.b", {"a": "1", "b": 1}),
    # `[1, 2] < [1, 3]`: arrays are not typed for `<`, refused (untyped-comparison).
    ("operator", "100.000000000001 > 100", {}),
    ("operator", "100 >= 100.0", {}),
    ("operator", '"b" > "B"', {}),
    ("operator", "{1, 2, 3} - {2}", {}),
    ("operator", "{1, 2, 3} & {2, 5}", {}),
    ("operator", "{x | some x in input.a}", {"a": ["b", "a", "é", "B"]}),
    ("operator", 'input.a in {"x", "y"}', {"a": "x"}),
]

# One case each that shows how a divergent built-in differs (evaluated without load checks).
DIVERGENT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lower": ("lower(input.s)", {"s": "TİCKETS.GET"}),
    "upper": ("upper(input.s)", {"s": "é"}),
    "sort": ("sort(input.a)", {"a": [3, 1.5, -2, 10]}),
    "format_int": ("format_int(input.n, 2)", {"n": -5}),
    "hex.encode": ("hex.encode(input.s)", {"s": "é"}),
    "json.marshal": ("json.marshal(input.o)", {"o": {"b": 1.5, "a": [None, "é"]}}),
    "object.union": (
        "object.union(input.a, input.b)",
        {"a": {"x": {"y": 1}}, "b": {"x": {"z": 2}}},
    ),
    "object.union_n": (
        "object.union_n([input.a, input.b])",
        {"a": {"x": {"y": 1}}, "b": {"x": {"z": 2}}},
    ),
    "is_set": ("is_set(input.v)", {"v": []}),
    "json.is_valid": ("json.is_valid(input.s)", {"s": "{"}),
    "regex.match": ("regex.match(`^\\w+$`, input.s)", {"s": "é"}),
    "to_number": ('to_number("12345678901234567890")', {}),
    "time.parse_rfc3339_ns": ("time.parse_rfc3339_ns(input.s)", {"s": "2026-01-02T03:04:05.5Z"}),
    "time.format": ("time.format(input.n)", {"n": 1_700_000_000_000_000_000}),
    "opa.runtime": ("count(opa.runtime()) == 0", {}),
    "net.cidr_contains": ('net.cidr_contains("10.0.0.0/8", input.s)', {"s": "10.1.2.3"}),
    "http.send": (
        'http.send({"method": "get", "url": "http://127.0.0.1:9", "raise_error": false})'
        ".status_code",
        {},
    ),
    # Issue 30: on the allow-list before, each shown differing here.
    "trim_space": ("trim_space(input.s)", {"s": "\u00a0a\u2003"}),
    "max": ("max(input.a)", {"a": ["5", 10]}),
    "min": ("min(input.a)", {"a": ["5", 10, [1]]}),
    "floor": ("floor(input.n)", {"n": -0.5}),
    "ceil": ("ceil(input.n)", {"n": -0.5}),
    "product": ("product(input.a)", {"a": [0.1, 3]}),
    "json.unmarshal": ("json.unmarshal(input.s)", {"s": '"\\u00e9"'}),
    "base64.decode": ("base64.decode(input.s)", {"s": "YQ"}),
    "semver.compare": ('semver.compare("1.0.0-alpha", "1.0.0")', {}),
    "time.parse_duration_ns": ("time.parse_duration_ns(input.s)", {"s": "-1m30s"}),
}


def _module(expr: str) -> str:
    return f"package sem\n\nimport rego.v1\n\nr := {expr}\n"


def _on_opa(expr: str, input_doc: dict[str, Any]) -> tuple[str, Any]:
    opa = Opa([("sem.rego", _module(expr))], {})
    try:
        defined, value = opa.query("data.sem.r", input_doc)
    except OpaError:
        return ("error", None)
    finally:
        opa.close()
    return ("value", value) if defined else ("undefined", None)


def _embedded(tmp: Path, expr: str, input_doc: dict[str, Any]) -> tuple[str, Any]:
    (tmp / "sem.rego").write_text(_module(expr))
    engine = EmbeddedEngine.from_dir(tmp, "data.sem.r", workers=1)
    try:
        result = engine.evaluate_sync(input_doc)
    except DecisionError:
        return ("error", None)
    finally:
        engine.close()
    return ("value", result.value) if result.defined else ("undefined", None)


def _raw_rego_cpp(expr: str, input_doc: dict[str, Any]) -> tuple[str, Any]:
    """rego-cpp without the sidecar's load checks (to show what the checks keep out)."""
    interp = Interpreter()
    interp.log_level = 0
    interp.strict_built_in_errors = True
    try:
        interp.add_module("sem.rego", _module(expr))
        set_input(interp._impl, interp.set_input_term, input_doc)
        defined, value = query_once(interp, "data.sem.r")
    except Exception:
        return ("error", None)
    return ("value", value) if defined else ("undefined", None)


@pytest.mark.parametrize(
    ("builtin", "expr", "input_doc"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_builtin_means_the_same_on_both_engines(opa_available, tmp_path, builtin, expr, input_doc):
    want = _on_opa(expr, input_doc)
    got = _embedded(tmp_path, expr, input_doc)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (expr, input_doc)


def test_every_accepted_builtin_has_cases():
    covered = {case[0] for case in CASES}
    assert VERIFIED_BUILTINS - covered == set()


@pytest.mark.parametrize("builtin", sorted(DIVERGENT_BUILTINS))
def test_each_divergent_builtin_differs_and_is_refused_at_load(opa_available, tmp_path, builtin):
    expr, input_doc = DIVERGENT_CASES[builtin]
    # If a regopy upgrade makes this pass, move the built-in to VERIFIED_BUILTINS with cases.
    assert _raw_rego_cpp(expr, input_doc) != _on_opa(expr, input_doc)
    (tmp_path / "sem.rego").write_text(_module(expr))
    with pytest.raises(UnsupportedBuiltinError) as refused:
        EmbeddedEngine.from_dir(tmp_path, "data.sem.r", workers=1)
    assert refused.value.builtin == builtin
    assert "policy.engine: opa" in str(refused.value)


def test_set_iteration_order_differs_but_the_enforced_decision_does_not(opa_available):
    """rego-cpp iterates a set in insertion order, OPA in sorted order: a list built from a set
    comes out in another order. The decision contract treats reasons and obligation lists as
    unordered, so the sidecar sorts them on receipt and enforces the same decision."""
    from sidecar.policy import parse_decision

    expr = '{"effect": "deny", "reasons": [r | some r in {"b", "a"}]}'
    on_opa, raw = _on_opa(expr, {}), _raw_rego_cpp(expr, {})
    assert on_opa != raw  # the engines differ ...
    decisions = [parse_decision(v[1], defined=True) for v in (on_opa, raw)]
    assert decisions[0] == decisions[1]  # ... the decision the sidecar enforces does not
    assert decisions[0].reasons == ("a", "b")
