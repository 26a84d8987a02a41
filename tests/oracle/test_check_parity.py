"""``policy check`` refuses what OPA's compiler refuses: each program below is refused by OPA
(asserted, so the corpus stays honest). With OPA's compiler in the process the check reports
OPA's own error (code, message, line); without it, the lexical fallback still gets a finding of
the named rule."""

from __future__ import annotations

import re

import pytest

from sidecar.policy import opa_compiler
from sidecar.policy.check import check_policy
from tests.conftest import REGO
from tests.oracle.conftest import Opa, OpaError

REFUSED_BY_OPA = {
    "v0-body": ("p { true }", "v1-syntax"),
    "v0-eq-body": ("p = 1 { true }", "v1-syntax"),
    "v0-assign-body": ("p := 1 { true }", "v1-syntax"),
    "v0-function": ("f(x) = y { y := x }", "v1-syntax"),
    "v0-partial-set": ("p[x] { x := 1 }", "v1-syntax"),
    "v0-partial-object": ("p[x] = y { x := 1; y := 2 }", "v1-syntax"),
    "v0-contains": ("p contains x { x := 1 }", "v1-syntax"),
    "v0-else": ("p := 1 if { input.a } else = 2 { true }", "v1-syntax"),
    "count-of-number": ("p := count(1)", "type-error"),
    "string-plus-number": ('p := "a" + 1', "type-error"),
    "startswith-number": ('p if startswith(1, "a")', "type-error"),
    "arity": ("p := count([1], 2)", "type-error"),
    "sum-of-string": ('p := sum("x")', "type-error"),
    "variable-of-wrong-type": ("p if { x := 1; count(x) > 0 }", "type-error"),
    "call-at-column-0": ("p if {\ncount(1)\n}", "type-error"),
    "object-get-on-number": ('p := object.get(1, "a", 2)', "type-error"),
    "equal-across-types": ('p if { "a" == 1 }', "type-error"),
    "with-on-a-variable": ("p if { true with x as 1 }", "with-target"),
    "shadowed-input": ("p if { input := 1 }", "shadowed-root"),
    "assigned-twice": ("p if { x := 1; x := 2 }", "redeclared-var"),
    "deprecated-builtin": ('p if re_match("a", "a")', "unsupported-builtin"),
    "unknown-function": ("p := nothere(1)", "unsupported-builtin"),
    "recursion": ("p if q\n\nq if p", "recursion"),
    "recursion-through-a-function": ("p if f(1)\n\nf(x) if {\n\tp\n\tx > 0\n}", "recursion"),
}


def _policy(tmp_path, body: str):
    root = tmp_path / "policy"
    (root / "p").mkdir(parents=True)
    source = f"package p\n\nimport rego.v1\n\n{body}\n"
    (root / "p" / "p.rego").write_text(source)
    return root, source


@pytest.mark.parametrize(("body", "rule"), REFUSED_BY_OPA.values(), ids=list(REFUSED_BY_OPA))
def test_check_refuses_what_opa_refuses(opa_available, tmp_path, body, rule):
    root, source = _policy(tmp_path, body)
    with pytest.raises(OpaError) as refused:
        Opa([("p.rego", source)], {}).query("data.p")
    opa_code, opa_line = _opa_error(refused.value.message)
    findings = check_policy(root, "data.p.p")
    compiled = [f for f in findings if f.rule == "compile" and "(OPA's compiler)" in f.message]
    assert any(
        f.message.startswith(opa_code) and f.line == opa_line and f.file.endswith("p.rego")
        for f in compiled
    ), [str(f) for f in findings]


@pytest.mark.parametrize(("body", "rule"), REFUSED_BY_OPA.values(), ids=list(REFUSED_BY_OPA))
def test_lexical_fallback_still_refuses(monkeypatch, tmp_path, body, rule):
    monkeypatch.setattr(opa_compiler, "unavailable_reason", lambda: "disabled by the test")
    root, _ = _policy(tmp_path, body)
    findings = check_policy(root, "data.p.p")
    assert rule in {f.rule for f in findings}, [str(f) for f in findings]


def _opa_error(message: str) -> tuple[str, int]:
    """OPA's first ``file:line: code`` in an error text."""
    match = re.search(r":(\d+): (rego_\w+):", message)
    assert match, message
    return match.group(2), int(match.group(1))


def test_the_shipped_policy_passes_both(opa_available):
    assert check_policy(REGO, "data.agentsidecar.authz.decision") == []
    opa = Opa.from_dir(REGO, include_tests=True)
    try:
        assert opa.query("data.agentsidecar.authz.decision")[0]  # compiles and decides
    finally:
        opa.close()
