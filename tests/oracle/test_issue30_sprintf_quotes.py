"""Found by the property-based differential run (issue 30, deliverable 4): in
``sprintf("v: %v", [s])``, where ``s`` was built by ``concat`` or ``replace``, rego-cpp prints
``s`` with its JSON quotes when the format has text around the verb (unescaped: the decision
holding it is malformed, so the call fails closed as ``policy_error``); OPA prints it without.
Refused at load (``sprintf-format``), with or without text around the verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from regopy import Interpreter
from regopy.rego_shared import rego_output_string, rego_query

from sidecar.policy import EmbeddedEngine
from sidecar.policy.check import check_policy
from sidecar.policy.portability import PortabilityError
from tests.oracle.conftest import Opa

QUOTED = {
    "concat": 'r := sprintf("v: %v", [concat("/", ["a", "b"])])',
    "replace": 'r := sprintf("v: %v", [replace("a-b", "-", "_")])',
    "through_a_variable": (
        'r := m if {\n\tx := concat("/", input.parts)\n\tm := sprintf("v: %v", [x])\n}'
    ),
    "through_a_rule": '_c := concat("/", input.parts)\n\nr := sprintf("v: %v", [_c])',
    "nested_concat": 'r := sprintf("v: %v", [concat("", [concat("/", ["a", "b"]), "!"])])',
}
ACCEPTED = {
    "parts_formatted": 'r := sprintf("v: %v/%v", ["a", "b"])',
    "trim": 'r := sprintf("v: %v", [trim(" a ", " ")])',
    "concat_compared": 'r := concat("/", ["a", "b"]) == "a/b"',
    "input_string": 'r := sprintf("v: %v", [input.s])',
}
DOC = {"parts": ["a", "b"], "s": "x/y"}


def _write(root: Path, body: str) -> Path:
    (root / "sem").mkdir(parents=True)
    (root / "sem" / "sem.rego").write_text(f"package sem\n\n{body}\n")
    return root


@pytest.mark.parametrize("body", QUOTED.values(), ids=list(QUOTED))
def test_item4_found_sprintf_of_a_concat_result_differs_and_is_refused(
    opa_available, tmp_path, body
):
    interp = Interpreter()
    interp.add_module("sem.rego", f"package sem\n\n{body}\n")
    interp.set_input_term(json.dumps(DOC))
    raw = rego_output_string(rego_query(interp._impl, "x = data.sem.r"))
    opa = Opa([("sem.rego", f"package sem\n\n{body}\n")], {})
    try:
        want = opa.query("data.sem.r", DOC)[1]
    finally:
        opa.close()
    try:  # rego-cpp: the quotes kept, unescaped (malformed), or at least another string
        got = json.loads(raw)["bindings"]["x"]
    except json.JSONDecodeError:
        got = None
    assert got != want and '"' not in want, (raw, want)
    root = _write(tmp_path / "p", body)
    with pytest.raises(PortabilityError, match="sprintf-format"):
        EmbeddedEngine.from_dir(root, "data.sem.r", workers=1)
    assert "sprintf-format" in {f.rule for f in check_policy(root, "data.sem.r")}


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=list(ACCEPTED))
def test_item4_other_formats_load_and_match_opa(opa_available, tmp_path, body):
    engine = EmbeddedEngine.from_dir(_write(tmp_path / "p", body), "data.sem.r", workers=1)
    opa = Opa([("sem.rego", f"package sem\n\n{body}\n")], {})
    try:
        assert engine.evaluate_sync(DOC).value == opa.query("data.sem.r", DOC)[1]
    finally:
        engine.close()
        opa.close()
