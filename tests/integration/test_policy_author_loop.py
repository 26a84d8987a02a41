"""The policy author's inner loop from the CLI: failures explained, engine errors as failed
tests, positioned syntax errors, and ``--watch``."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.policy import opa_compiler
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parents[2]
SUBJECT = (
    '{"spiffe_id": "spiffe://demo.example/agent/support", "trust_domain": "demo.example", '
    '"attestation": "static", "claims": {}}'
)
ACTION = (
    '{"kind": "tool", "name": "tickets.get", "operation": "read", "target": "tickets", '
    '"arguments": {"id": "7"}, "data_classes": []}'
)


def _copy_rego(tmp_path: Path) -> Path:
    target = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", target)
    return target


def _add_test(rego: Path, text: str) -> Path:
    path = rego / "agentsidecar/authz/extra_test.rego"
    path.write_text(f"package agentsidecar.authz_test\n\nimport rego.v1\n\n{text}\n")
    return path


def test_a_failed_comparison_shows_expected_and_actual(tmp_path):
    rego = _copy_rego(tmp_path)
    path = _add_test(
        rego,
        "test_wrong_expectation if {\n"
        '\tdata.agentsidecar.authz.decision == {"effect": "allow", "reasons": []}'
        f" with input.version as 1\n\t\twith input.subject as {SUBJECT}\n"
        f"\t\twith input.action as {ACTION}\n}}",
    )
    done = cli("policy", "test", str(rego))
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL: data.agentsidecar.authz_test.test_wrong_expectation" in out
    assert f"{path}:5: expected: " + '{"effect": "allow", "reasons": []}' in out
    assert 'actual:   {"effect": "allow", "obligations": {"log": "redacted"}, "reasons": []}' in out


def test_an_engine_error_is_a_failed_test_not_a_traceback(tmp_path):
    rego = _copy_rego(tmp_path)
    _add_test(
        rego,
        '_conflict := {k: v | some k in ["a", "a"]; some v in [1, 2]}\n\n'
        "test_key_conflict if {\n\t_conflict == {}\n}",
    )
    done = cli("policy", "test", str(rego))
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "ERROR: data.agentsidecar.authz_test.test_key_conflict" in done.stdout
    assert "object keys must be unique" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith("passed, 1 failed")


def test_a_syntax_error_names_file_line_and_column_once(tmp_path):
    rego = _copy_rego(tmp_path)
    bad = rego / "agentsidecar/authz/bad.rego"
    bad.write_text("package agentsidecar.authz\n\nimport rego.v1\n\n_x if {\n\tinput.a ==\n}\n")
    check = cli("policy", "check", str(rego))
    assert check.returncode == 1
    findings = [line for line in check.stdout.splitlines() if "bad.rego" in line]
    if opa_compiler.unavailable_reason():  # the embedded engine's own message
        expected = f"{bad}:6:10: Invalid boolean operator"
    else:  # OPA's compiler decides, with its message and line (issue 30)
        expected = f"{bad}:7: rego_parse_error: unexpected }} token (OPA's compiler)"
    file_line, message = expected.split(": ", 1)
    assert findings == [f"{file_line}: compile: {message}"]
    assert "rego-errorseq" not in check.stdout + check.stderr
    test = cli("policy", "test", str(rego))
    assert test.returncode == 2
    assert test.stderr.count(expected) == 1
    assert "rego-errorseq" not in test.stdout + test.stderr


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str], wanted: str, bound_s: float = 60) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        seen.append(line)
        if wanted in line:
            return seen
    raise AssertionError(f"never saw {wanted!r}; saw {seen}")


@pytest.mark.timeout(660)  # two whole `policy test` runs, on a machine as loaded as CI's
def test_watch_runs_again_when_a_file_changes(tmp_path):
    rego = _copy_rego(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "policy", "test", str(rego), "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = _lines(proc)
        # a whole `policy test` run first (OPA's compiler vets, then every test): bound generously
        first = _until(lines, "watching", bound_s=300)
        assert any(line.strip().endswith("passed, 0 failed") for line in first)
        _add_test(rego, "test_now_failing if {\n\t1 == 2\n}")
        second = _until(lines, "passed, 1 failed", bound_s=300)
        assert any("changed, running again" in line for line in second)
        assert any("FAIL: data.agentsidecar.authz_test.test_now_failing" in x for x in second)
    finally:
        proc.terminate()
        proc.wait(10)
