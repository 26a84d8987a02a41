"""The decision contract: only an exact v1 decision is enforceable."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sidecar.policy import Decision, DecisionError, parse_decision

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "rego/schemas/decision.v1.json").read_text()
)


def test_a_full_decision_parses():
    raw = {
        "effect": "allow",
        "reasons": [],
        "obligations": {
            "redact": ["secret", "email"],
            "credential": {"audience": "tickets", "ttl_s": 60},
            "max_tokens": 2048,
            "log": "full",
            "approval": {"approvers": ["group:ops"], "ttl_s": 900},
        },
    }
    jsonschema.validate(raw, SCHEMA)
    decision = parse_decision(raw)
    assert decision.allowed and decision.code == "ok"
    assert decision.obligations.redact == ("email", "secret")
    assert decision.obligations.credential.audience == "tickets"
    assert decision.obligations.to_dict()["approval"] == {"approvers": ["group:ops"], "ttl_s": 900}


def test_log_defaults_to_metadata():
    assert parse_decision({"effect": "deny"}).obligations.log == "metadata"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "policy_invalid_decision"),
        ([], "policy_invalid_decision"),
        (True, "policy_invalid_decision"),
        ({}, "policy_unknown_effect"),
        ({"effect": "ALLOW"}, "policy_unknown_effect"),
        ({"effect": None}, "policy_unknown_effect"),
        ({"effect": "allow", "extra": 1}, "policy_invalid_decision"),
        ({"effect": "deny", "reasons": [1]}, "policy_invalid_decision"),
        ({"effect": "allow", "obligations": []}, "policy_invalid_decision"),
        ({"effect": "allow", "obligations": {"rate_limit": 1}}, "unknown_obligation"),
        ({"effect": "allow", "obligations": {"log": "all"}}, "invalid_obligation"),
        ({"effect": "allow", "obligations": {"max_tokens": 0}}, "invalid_obligation"),
        ({"effect": "allow", "obligations": {"redact_response": "secret"}}, "invalid_obligation"),
        ({"effect": "allow", "obligations": {"redact_response": [""]}}, "invalid_obligation"),
        ({"effect": "allow", "obligations": {"max_tokens": True}}, "invalid_obligation"),
        ({"effect": "allow", "obligations": {"redact": "email"}}, "invalid_obligation"),
        (
            {"effect": "allow", "obligations": {"credential": {"audience": "x"}}},
            "invalid_obligation",
        ),
        (
            {"effect": "allow", "obligations": {"credential": {"audience": "", "ttl_s": 5}}},
            "invalid_obligation",
        ),
        (
            {"effect": "step_up", "obligations": {"approval": {"approvers": "x", "ttl_s": 1}}},
            "invalid_obligation",
        ),
    ],
)
def test_anything_else_is_a_decision_error_with_its_code(raw, code):
    with pytest.raises(DecisionError) as error:
        parse_decision(raw)
    assert error.value.code == code
    # The schema shipped for policy authors agrees that these are not v1 decisions.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, SCHEMA)


def test_undefined_is_policy_undefined():
    with pytest.raises(DecisionError) as error:
        parse_decision(None, defined=False)
    assert error.value.code == "policy_undefined"


def test_fail_closed_is_a_deny_carrying_the_code_and_reason():
    decision = Decision.fail_closed(DecisionError("policy_timeout", "too slow"))
    assert (decision.effect, decision.code, decision.reasons) == (
        "deny",
        "policy_timeout",
        ("too slow",),
    )
    assert not decision.allowed


def test_redact_response_is_an_obligation():
    decision = parse_decision(
        {"effect": "allow", "obligations": {"redact_response": ["secret", "private_key"]}}
    )
    assert decision.obligations.redact_response == ("private_key", "secret")
    assert decision.obligations.to_dict()["redact_response"] == ["private_key", "secret"]
