"""Issue 30, deliverable 5 (time): tests of the usual shape (``ref == constant with input... with
data...``) are decided through one compiled plan instead of rego-cpp's ``with`` (which compiles a
copy of the policy per expression). Every verdict must be OPA's: passing and failing tests,
Rego's equality (1 == 1.0, true != 1, object key order, array order), undefined values, data
replaced, and the forms that must keep ``with`` (a rule as target, another operator, no input, two
definitions); a number the input guard refuses is an ERROR, as ``serve`` refuses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sidecar.policy.source import load_policy_dir
from sidecar.policy.testing import TestOutcome, _direct_plans, run_tests
from tests.conftest import REGO
from tests.oracle.conftest import Opa, OpaError

SUPPORT = '{"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", "attestation": "static", "claims": {}}'  # noqa: E501
READ = '{"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", "arguments": {"id": "7"}, "data_classes": []}'  # noqa: E501
REFUND = '{"kind": "tool", "name": "payments.refund", "operation": "act", "target": "payments", "arguments": {"amount": 500}, "data_classes": []}'  # noqa: E501
TASK = '{"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1}'
CALL = f"with input.version as 1 with input.subject as {SUPPORT}"

# name -> (body, decided directly?)
GENERATED = {
    "test_allow_right": (
        f'authz.decision.effect == "allow" {CALL} with input.action as {READ}',
        True,
    ),
    "test_allow_wrong": (
        f'authz.decision.effect == "deny" {CALL} with input.action as {READ}',
        True,
    ),
    "test_whole_decision_key_order": (
        'authz.decision == {"reasons": [], "obligations": {"log": "redacted"}, '
        f'"effect": "allow"}} '
        f"{CALL} with input.action as {READ}",
        True,
    ),
    "test_whole_decision_wrong": (
        f'authz.decision == {{"effect": "allow", "reasons": []}} {CALL} '
        f"with input.action as {READ}",
        True,
    ),
    "test_int_equals_float": (
        f"authz.decision.obligations.approval.ttl_s == 900.0 {CALL} with input.action as {REFUND} "
        f"with input.task as {TASK}",
        True,
    ),
    "test_true_is_not_one": (
        f"authz.decision.obligations.approval.ttl_s == true {CALL} with input.action as {REFUND} "
        f"with input.task as {TASK}",
        True,
    ),
    "test_array_order_counts": (
        f'authz.decision.obligations.approval.approvers == ["x", "group:payments-oncall"] {CALL} '
        f"with input.action as {REFUND} with input.task as {TASK}",
        True,
    ),
    "test_undefined_path_fails": (
        f"authz.decision.obligations.max_tokens == 1 {CALL} with input.action as {READ}",
        True,
    ),
    "test_constant_on_the_left": (
        f'"allow" == authz.decision.effect {CALL} with input.action as {READ}',
        True,
    ),
    "test_data_replaced": (
        f'authz.decision.effect == "deny" {CALL} with input.action as {READ} '
        "with data.agentsidecar.grants as {}",
        True,
    ),
    "test_data_replaced_wrong": (
        f'authz.decision.effect == "allow" {CALL} with input.action as {READ} '
        "with data.agentsidecar.grants as {}",
        True,
    ),
    "test_two_expressions": (
        f'authz.decision.effect == "allow" {CALL} with input.action as {READ}\n'
        f'\tauthz.decision.effect == "deny" {CALL} with input.action as {READ} '
        "with data.agentsidecar.grants as {}",
        True,
    ),
    "test_nested_input_path": (
        f'authz.decision.effect == "allow" {CALL} with input.action as {READ} '
        'with input.action.arguments.id as "8"',
        True,
    ),
    # these keep rego-cpp's `with`
    "test_not_equal_operator": (
        f'authz.decision.effect != "deny" {CALL} with input.action as {READ}',
        False,
    ),
    "test_no_input": ('authz.decision.effect == "deny"', False),
    "test_with_on_a_rule": (
        f'authz.decision.effect == "allow" {CALL} with input.action as {READ} '
        "with data.agentsidecar.authz._granted as true",
        False,
    ),
    "test_not_an_equality": (
        f"count(authz.decision.reasons) == 0 {CALL} with input.action as {READ}",
        False,
    ),
    "test_guard_refuses_the_number": (
        f'authz.decision.effect == "step_up" {CALL} with input.action as {REFUND} '
        f"with input.task as {TASK} with input.action.arguments.amount as 100.00000000000001",
        True,  # planned; an ERROR: `serve` would refuse the input (before: a FAIL, OPA passes)
    ),
}
TWICE = (
    f'test_twice if {{\n\tauthz.decision.effect == "deny" {CALL} '
    f"with input.action as {READ}\n}}\n\n"
    f'test_twice if {{\n\tauthz.decision.effect == "allow" {CALL} with input.action as {READ}\n}}\n'
)


def _write(root: Path) -> Path:
    shutil.copytree(REGO, root, ignore=shutil.ignore_patterns("schemas"))
    rules = "\n\n".join(f"{name} if {{\n\t{body}\n}}" for name, (body, _) in GENERATED.items())
    (root / "agentsidecar" / "authz" / "gen_test.rego").write_text(
        "package agentsidecar.authz_test\n\nimport rego.v1\n\nimport data.agentsidecar.authz\n\n"
        + rules
        + "\n\n"
        + TWICE
    )
    return root


def _opa_verdicts(root: Path, refs: list[str]) -> dict[str, str]:
    opa = Opa.from_dir(root, include_tests=True)
    out = {}
    try:
        for ref in refs:
            try:
                defined, value = opa.query(ref)
            except OpaError:
                out[ref] = TestOutcome.ERROR
                continue
            out[ref] = TestOutcome.PASS if defined and value is True else TestOutcome.FAIL
    finally:
        opa.close()
    return out


def test_item5_direct_verdicts_are_opas(opa_available, tmp_path):
    root = _write(tmp_path / "policy")
    source = load_policy_dir(root, include_tests=True)
    plans = _direct_plans(source.modules, source.data)
    generated = plans[next(p for p in plans if p.endswith("gen_test.rego"))]
    for name, (_, direct) in GENERATED.items():
        assert (name in generated) is direct, name
    assert "test_twice" not in generated
    shipped = sum(len(v) for p, v in plans.items() if not p.endswith("gen_test.rego"))
    assert shipped >= 60  # the shipped tests are (nearly all) of the usual shape

    results = run_tests(root)
    got = {r.case.ref: r.outcome for r in results}
    want = _opa_verdicts(root, sorted(got))
    guarded = "data.agentsidecar.authz_test.test_guard_refuses_the_number"
    assert got.pop(guarded) == TestOutcome.ERROR and want.pop(guarded) == TestOutcome.PASS
    message = next(r.message for r in results if r.case.ref == guarded)
    assert "input.action.arguments.amount" in message and "input_unrepresentable" in message
    assert got == want, {ref: (got[ref], want[ref]) for ref in got if got[ref] != want[ref]}
    # the generated ones really exercise both outcomes
    gen = {ref.rsplit(".", 1)[1]: outcome for ref, outcome in got.items()}
    assert (
        gen["test_allow_right"] == TestOutcome.PASS and gen["test_allow_wrong"] == TestOutcome.FAIL
    )
    assert gen["test_int_equals_float"] == TestOutcome.PASS
    assert gen["test_true_is_not_one"] == TestOutcome.FAIL


def test_item5_a_direct_failure_shows_both_values(opa_available, tmp_path):
    root = _write(tmp_path / "policy")
    results = {r.case.name: r for r in run_tests(root, run="test_whole_decision_wrong")}
    message = results["test_whole_decision_wrong"].message
    assert message.startswith('expected: {"effect": "allow", "reasons": []}'), message
    assert '"obligations": {"log": "redacted"}' in message
    assert "(data.agentsidecar.authz.decision)" in message
    assert json.loads(message.split("actual:", 1)[1].rsplit("(", 1)[0])["effect"] == "allow"
