"""The security engineer's workflow from the CLI: eval, check, replay (with --to-tests, whose
file `policy test` then runs), coverage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sidecar.client import PolicyDenied
from tests.conftest import REGO
from tests.support.cli import cli
from tests.support.inputs import sample_input

INPUT = sample_input()


def test_eval_prints_the_raw_result_and_the_validated_decision(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps(INPUT))
    done = cli("policy", "eval", "--input", str(tmp_path / "in.json"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["defined"] is True
    assert out["result"] == {"effect": "allow", "reasons": [], "obligations": {"log": "redacted"}}
    assert out["decision"]["code"] == "ok"
    undefined = cli(
        "policy",
        "eval",
        "--input",
        str(tmp_path / "in.json"),
        "--query",
        "data.agentsidecar.authz.nothing_here",
    )
    assert json.loads(undefined.stdout)["decision"]["code"] == "policy_undefined"


def _bad_policy(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(REGO, root)
    authz = root / "agentsidecar" / "authz"
    (authz / "legacy.rego").write_text(
        "package agentsidecar.authz\n\n"
        "legacy_allow {\n\tinput.x\n}\n\n"
        'deny[msg] {\n\tmsg := "old"\n}\n'
    )
    (authz / "misplaced.rego").write_text("package somewhere.else\n\nimport rego.v1\n\nx := 1\n")
    data = json.loads((root / "agentsidecar" / "data.json").read_text())
    data["grants"]["not-a-spiffe-id"] = {"write": ["x"]}
    (root / "agentsidecar" / "data.json").write_text(json.dumps(data))
    return root


def test_check_reports_each_problem_with_file_and_line(tmp_path):
    root = _bad_policy(tmp_path)
    done = cli("policy", "check", str(root))
    assert done.returncode == 1
    out = done.stdout
    legacy = root / "agentsidecar" / "authz" / "legacy.rego"
    assert f"{legacy}:3: v1-syntax: rule legacy_allow needs `if`" in out
    assert f"{legacy}:7: v1-syntax: partial rule deny[...]" in out
    assert f"{legacy}:3: helper-prefix: helper rule legacy_allow should start with _" in out
    assert "misplaced.rego:1: package-path: package somewhere.else" in out
    assert "data-schema: data.agentsidecar.grants" in out
    assert "not-a-spiffe-id" in out and "'write'" in out


def test_check_refuses_unsupported_builtins(tmp_path):
    root = tmp_path / "p"
    shutil.copytree(REGO, root)
    (root / "agentsidecar" / "authz" / "net.rego").write_text(
        "package agentsidecar.authz\n\nimport rego.v1\n\n"
        '_internal if net.cidr_contains("10.0.0.0/8", input.ip)\n'
    )
    done = cli("policy", "check", str(root))
    assert done.returncode == 1
    assert "net.rego:5: unsupported-builtin:" in done.stdout


def test_coverage_says_it_is_not_available():
    done = cli("policy", "test", "rego/", "--coverage")
    assert done.returncode == 2
    assert "opa test --coverage" in done.stderr


def test_replay_detects_a_tightened_rule_and_writes_tests_that_pass(start_sidecar, tools, tmp_path):
    running = start_sidecar(tools.url)
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "1"})
        client.call_tool("kb.search", {"q": "printer"})
        task = client.start_task("tickets").task_id
        client.call_tool("tickets.create", {"title": "t"}, task_id=task)
        with pytest.raises(PolicyDenied):
            client.call_tool("tickets.close", {"id": "1"})
    running.stop()
    audit = running.audit_path

    unchanged = cli(
        "policy", "replay", "--audit", str(audit), "--policy", "rego", "--fail-on-change"
    )
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "4 records, 3 replayed (recorded with input), 0 changed" in unchanged.stdout

    candidate = tmp_path / "candidate"
    shutil.copytree(REGO, candidate)
    authz = candidate / "agentsidecar" / "authz" / "authz.rego"
    authz.write_text(
        authz.read_text()
        + '\n_deny contains "knowledge base is closed" if input.action.name == "kb.search"\n'
    )
    tests_file = candidate / "agentsidecar" / "authz" / "replay_test.rego"
    done = cli(
        "policy",
        "replay",
        "--audit",
        str(audit),
        "--policy",
        str(candidate),
        "--fail-on-change",
        "--to-tests",
        str(tests_file),
    )
    assert done.returncode == 1  # an allowed call would now be denied
    assert "kb.search: allow -> deny (knowledge base is closed)" in done.stdout
    assert "3 replayed (recorded with input), 1 changed" in done.stdout
    assert tests_file.exists()
    tested = cli("policy", "test", str(candidate), "--run", "replay", "-v")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.strip().splitlines()[-1] == "1 passed, 0 failed"
    assert "warning" not in tested.stderr  # the generated form is safe on the embedded engine
    # And the pinned answer really depends on the candidate: on the old policy it fails.
    old = tmp_path / "old"
    shutil.copytree(REGO, old)
    shutil.copy(tests_file, old / "agentsidecar" / "authz" / "replay_test.rego")
    assert cli("policy", "test", str(old), "--run", "replay").returncode == 1
