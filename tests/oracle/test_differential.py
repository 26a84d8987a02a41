"""The differential run: thousands of generated inputs decided by the sidecar's own engine path
(``EmbeddedEngine``, input builder included) and by OPA, on the shipped policy and data. Every
decision the sidecar would enforce must be the same; an input the embedded engine refuses
before policy (a number it cannot compare exactly) must be exactly one the guard names."""

from __future__ import annotations

import json
from collections import Counter

from sidecar.policy import DecisionError, EmbeddedEngine, parse_decision
from sidecar.policy._rego_input import UnrepresentableInput, check_numbers
from sidecar.policy.source import load_policy_dir
from tests.conftest import REGO
from tests.oracle import corpus
from tests.oracle.conftest import Opa, OpaError

QUERY = "data.agentsidecar.authz.decision"
# Inputs refused before policy (a number the embedded engine cannot compare exactly) that OPA
# would allow or step up: fail-closed, but measured so that it cannot grow unnoticed. Measured
# on the seeded corpus: 729 of 12,177 refused; OPA denies 642 of them, allows 51, steps up 36.
# Issue 33 (model grants per API; aliases claude-small and embed-small in the data): 904 of
# 13,026 refused; OPA denies 816, allows 52 (16 of them model calls with a huge task token
# count), steps up 36.
OVER_REFUSAL_BOUND = 88


def _enforced(defined: bool, value: object) -> str:
    """The decision the sidecar enforces, as comparable text (its code on a failure)."""
    try:
        decision = parse_decision(value, defined=defined)
    except DecisionError as exc:
        return f"deny:{exc.code}"
    return json.dumps(
        {
            "effect": decision.effect,
            "reasons": decision.reasons,
            "obligations": decision.obligations.to_dict(),
        },
        sort_keys=True,
    )


def _unrepresentable(doc: dict) -> bool:
    try:
        check_numbers(doc)
    except UnrepresentableInput:
        return True
    return False


def test_every_generated_input_is_decided_as_opa_decides(opa_available, capsys):
    data = load_policy_dir(REGO).data["agentsidecar"]
    engine = EmbeddedEngine.from_dir(REGO, QUERY, workers=1)
    opa = Opa.from_dir(REGO)
    tally: Counter[str] = Counter()
    differences = []
    try:
        for doc in corpus.generate(data):
            opa_raw = got_raw = None
            try:
                opa_defined, opa_value = opa.query(QUERY, doc)
                want = _enforced(opa_defined, opa_value)
                opa_raw = json.dumps([opa_defined, opa_value], sort_keys=True)
            except OpaError as exc:
                want = f"deny:engine_error ({exc.code})"
            try:
                result = engine.evaluate_sync(doc)
                got = _enforced(result.defined, result.value)
                got_raw = json.dumps([result.defined, result.value], sort_keys=True)
            except DecisionError as exc:
                got = f"deny:{exc.code}"
            if got == want and opa_raw is not None and got_raw not in (None, opa_raw):
                # Whole decisions, order included (issue 30): the same once the sidecar sorts
                # reasons and obligation lists, but in another order as the engine returned it.
                tally["same enforced, raw order differs"] += 1
            if got == "deny:input_unrepresentable":
                assert _unrepresentable(doc), doc
                tally["refused before policy"] += 1
                # Compared too (issue 30): a refusal is a deny, never more permissive; where
                # OPA would not deny it is over-refusal, measured and bounded below.
                opa_effect = json.loads(want)["effect"] if want.startswith("{") else "error"
                tally[f"refused, OPA: {opa_effect}"] += 1
                continue
            assert not _unrepresentable(doc), doc
            tally["decided"] += 1
            tally[json.loads(want)["effect"] if want.startswith("{") else "error"] += 1
            if got != want and not (got.startswith("deny:policy_error") and "engine_error" in want):
                differences.append((doc, want, got))
    finally:
        engine.close()
        opa.close()
    with capsys.disabled():
        print(
            f"\ndifferential corpus: {sum(tally[k] for k in ('decided', 'refused before policy'))} "
            f"inputs; {dict(tally)}; differing: {len(differences)}"
        )
    assert tally["decided"] >= 3000 and tally["allow"] and tally["step_up"] and tally["deny"]
    assert differences == [], differences[:3]
    over_refused = tally["refused, OPA: allow"] + tally["refused, OPA: step_up"]
    assert over_refused <= OVER_REFUSAL_BOUND, dict(tally)
