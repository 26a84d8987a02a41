"""The constructs the embedded engine would decide differently from OPA are named at load,
and the forms that mean the same on both are not (no false alarms on ordinary Rego)."""

from __future__ import annotations

import pytest

from sidecar.policy.compat import RegoModule
from sidecar.policy.portability import portability_issues
from sidecar.policy.source import load_policy_dir
from tests.conftest import REGO


def _rules(body: str) -> list[str]:
    module = RegoModule("p.rego", f"package p\n\nimport rego.v1\n\n{body}\n")
    return [i.rule for i in portability_issues([module])]


@pytest.mark.parametrize(
    "body",
    [
        "r if not is_number(input.x)",
        "r if not input.x > 5",
        "f(a) if a == 1\n\nr if not f(input.y.z)",
        "r if not count(input.x) > 1",
        "r if { x := 1; not x in input.x }",
        "r if not input.x != 1",
        "r if not input.x + 1 == 2",
        "r if { not input.a[input.k] }",
        'q := input.q\n\nr if not startswith(q, "a")',
    ],
)
def test_not_over_a_reference_is_refused(body):
    assert "not-undefined" in _rules(body)


@pytest.mark.parametrize(
    "body",
    [
        "r if not input.x",
        "r if not input.x == 5",
        "r if { v := input.x; not is_number(v) }",
        'r if { not startswith("abc", "b") }',
        "q if input.q\n\nr if not q",
    ],
)
def test_not_over_bound_values_is_accepted(body):
    assert "not-undefined" not in _rules(body)


@pytest.mark.parametrize(
    "body",
    [
        "r if input.amount > 100",
        "r if { v := input.amount; v >= data.limit }",
        "r if { is_number(input.a); input.a < input.b }",
    ],
)
def test_comparison_without_a_type_check_is_refused(body):
    assert "untyped-comparison" in _rules(body)


@pytest.mark.parametrize(
    "body",
    [
        "r if { v := input.amount; is_number(v); v > 100 }",
        "r if count(input.list) > 2",
        'r if "b" > "a"',
        "r if { is_string(input.a); is_string(input.b); input.a <= input.b }",
    ],
)
def test_typed_comparisons_are_accepted(body):
    assert "untyped-comparison" not in _rules(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('r := sprintf("%d", [1])', ["sprintf-format"]),
        ('r := sprintf("%s and %v", ["a", 1])', ["sprintf-format"]),
        ("r := sprintf(input.format, [1])", ["sprintf-format"]),
        ('r := sprintf("%v%% of %v", [1, 2])', []),
        ('r := lower("A")', ["divergent-builtin"]),
        ('r := regex.match("a", "a")', ["divergent-builtin"]),
        ("r := walk(input)", ["divergent-builtin"]),  # not verified: refused too
        ('r := trim_space(" a ")', ["divergent-builtin"]),  # Unicode spaces (issue 30)
        ('r := trim(" a ", " ")', []),
    ],
)
def test_builtins_and_sprintf_formats(body, expected):
    assert _rules(body) == expected


def test_the_shipped_policy_and_tests_have_no_issue():
    assert portability_issues(load_policy_dir(REGO, include_tests=True).modules) == []
