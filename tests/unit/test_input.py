"""Policy input v1 is built exactly as the contract says, and validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sidecar.identity import InvalidSpiffeIdError, Subject
from sidecar.ids import new_decision_id
from sidecar.policy import Action, ApprovalInfo, TaskInfo, build_input

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "rego/schemas/input.v1.json").read_text()
)
SUBJECT = Subject("spiffe://prod.example/ns/support/sa/summarizer", "pod-svid")
ACTION = Action(
    kind="tool",
    name="tickets.create",
    operation="act",
    target="tickets",
    arguments={"title": "t", "n": 2**70},
    data_classes=["email", "email", "credit_card"],
)


def _build(**kwargs):
    return build_input(
        request_id=new_decision_id(),
        time_ns=1763700000000000000,
        subject=SUBJECT,
        action=ACTION,
        **kwargs,
    )


def test_minimal_input_has_the_contract_shape():
    doc = _build()
    jsonschema.validate(doc, SCHEMA)
    assert doc["version"] == 1
    assert doc["subject"] == {
        "spiffe_id": "spiffe://prod.example/ns/support/sa/summarizer",
        "trust_domain": "prod.example",
        "attestation": "pod-svid",
        "claims": {},
    }
    assert doc["action"]["data_classes"] == ["credit_card", "email"]
    assert doc["delegation"] == {"chain": [], "depth": 0}
    assert "task" not in doc and "approval" not in doc


def test_full_input_validates():
    doc = _build(
        task=TaskInfo(id="t-42", intent="summarise ticket 123", calls=3, tokens=1200, age_s=40.0),
        delegation_chain=["spiffe://prod.example/ns/ops/sa/planner"],
        approval=ApprovalInfo(id="ap-9", approved_by="alice@example.com", approved_at_ns=1),
    )
    jsonschema.validate(doc, SCHEMA)
    assert doc["delegation"]["depth"] == 1
    assert doc["task"]["calls"] == 3


def test_input_is_a_pure_function_of_its_arguments():
    one = build_input(
        request_id="01J00000000000000000000000", time_ns=5, subject=SUBJECT, action=ACTION
    )
    two = build_input(
        request_id="01J00000000000000000000000", time_ns=5, subject=SUBJECT, action=ACTION
    )
    assert one == two and one is not two


def test_the_schema_rejects_what_the_builder_must_never_produce():
    doc = _build()
    doc["subject"]["attestation"] = "claimed"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


@pytest.mark.parametrize(
    "spiffe_id",
    ["http://x/y", "spiffe://", "spiffe://UPPER/x", "spiffe://td/../x", "spiffe://td/a b"],
)
def test_a_subject_must_be_a_spiffe_id(spiffe_id):
    with pytest.raises(InvalidSpiffeIdError):
        Subject(spiffe_id, "static")


def test_decision_ids_are_sortable_ulids():
    a, b = new_decision_id(1_000_000_000), new_decision_id(2_000_000_000)
    assert len(a) == 26 and a < b
