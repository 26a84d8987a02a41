"""Every Rego test of the shipped policy gives the same verdict on the embedded engine (through
``policy test``'s runner) and on OPA."""

from __future__ import annotations

from sidecar.policy.testing import TestOutcome, discover_tests, run_tests
from tests.conftest import REGO
from tests.oracle.conftest import Opa


def test_shipped_rego_tests_pass_on_both_engines(opa_available):
    embedded = {r.case.ref: r.outcome for r in run_tests(REGO)}
    opa = Opa.from_dir(REGO, include_tests=True)
    try:
        on_opa = {}
        for case in discover_tests(REGO):
            defined, value = opa.query(case.ref)
            on_opa[case.ref] = TestOutcome.PASS if defined and value is True else TestOutcome.FAIL
    finally:
        opa.close()
    assert len(embedded) >= 36
    assert embedded == on_opa
    assert set(embedded.values()) == {TestOutcome.PASS}
