"""``policy check``'s own view of what OPA's compiler refuses (the same programs are also run
through OPA in tests/oracle/test_check_parity.py); here, mostly, what it must not flag."""

from __future__ import annotations

import pytest

from sidecar.policy.compat import RegoModule
from sidecar.policy.source import load_policy_dir
from sidecar.policy.static_check import static_issues
from tests.conftest import REGO


def _rules(body: str, functions: frozenset[str] = frozenset()) -> list[str]:
    module = RegoModule("p.rego", f"package p\n\nimport rego.v1\n\n{body}\n")
    return [i.rule for i in static_issues(module, set(functions))]


@pytest.mark.parametrize(
    "body",
    [
        'p := {"a": 1}',
        "p := {1, 2}",
        'p := {\n\t"a": 1,\n}',
        "p if {\n\ttrue\n}",
        "p := 1 if {\n\tinput.a\n} else := 2",
        "p contains x if {\n\tsome x in input.xs\n}",
        'f(x) := y if {\n\ty := concat(",", x)\n}',
        "p := [x | some x in input.a]",
        "p := {k: v | some k, v in input.o}",
        "p if { x := 1; y := [x | x := input.a[_]] }",
        "p if { input.a == 1 with input.a as 1 }",
        "p if f(1) with f as g\n\nf(x) := x\n\ng(x) := x",
        'p := "a" == "b"',
        "p := 1 + 2",
        "p := count(input.list)",
    ],
)
def test_valid_rego_v1_is_not_flagged(body):
    assert _rules(body, frozenset({"f", "g"})) == []


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ("p { true }", "v1-syntax"),
        ("p = 1 { true }", "v1-syntax"),
        ("p contains x { x := 1 }", "v1-syntax"),
        ("p := 1 if { input.a } else = 2 { true }", "v1-syntax"),
        ("p := count(1)", "type-error"),
        ('p := substring("abc", "1", 2)', "type-error"),
        ("p := count([1], 2)", "type-error"),
        ('p := 1 + "a"', "type-error"),
        ("p if { input := 1 }", "shadowed-root"),
        ("p if { x := 1; x := 2 }", "redeclared-var"),
        ("p if { true with x as 1 }", "with-target"),
        ("p if q\n\nq if p", "recursion"),
    ],
)
def test_what_opa_refuses_is_flagged(body, rule):
    assert rule in _rules(body)


def test_the_shipped_policy_has_no_issue():
    source = load_policy_dir(REGO, include_tests=True)
    functions = {f for m in source.modules for f in m.defined_functions()}
    assert [i for m in source.modules for i in static_issues(m, functions)] == []
