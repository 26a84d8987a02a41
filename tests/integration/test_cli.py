"""The `agent-sidecar` command as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.cli import cli
from tests.support.inputs import sample_input

ROOT = Path(__file__).resolve().parents[2]


def _copy_rego(tmp_path: Path) -> Path:
    target = tmp_path / "rego"
    shutil.copytree(ROOT / "rego", target)
    return target


def test_policy_test_passes_on_the_shipped_policy():
    done = cli("policy", "test", "rego/")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    count = len(
        [
            line
            for path in (ROOT / "rego").rglob("*_test.rego")
            for line in path.read_text().splitlines()
            if line.startswith("test_")
        ]
    )
    assert count >= 36
    assert last == f"{count} passed, 0 failed"


def test_a_broken_test_fails_the_run_and_is_named_with_its_file(tmp_path):
    rego = _copy_rego(tmp_path)
    test_file = rego / "agentsidecar/authz/authz_test.rego"
    text = test_file.read_text()
    broken = text.replace(
        'test_unknown_subject_denies if {\n\tauthz.decision == {\n\t\t"effect": "deny"',
        'test_unknown_subject_denies if {\n\tauthz.decision == {\n\t\t"effect": "allow"',
    )
    assert broken != text
    test_file.write_text(broken)
    done = cli("policy", "test", str(rego))
    assert done.returncode == 1
    assert "FAIL: data.agentsidecar.authz_test.test_unknown_subject_denies" in done.stdout
    assert f"{test_file}:" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith("passed, 1 failed")


def test_verbose_and_run_filter(tmp_path):
    done = cli("policy", "test", "rego/", "--verbose", "--run", "high_risk")
    assert done.returncode == 0
    passes = [line for line in done.stdout.splitlines() if line.startswith("PASS:")]
    assert passes and all("high_risk" in line for line in passes)
    assert done.stdout.strip().splitlines()[-1] == f"{len(passes)} passed, 0 failed"


def test_a_test_file_the_engine_cannot_evaluate_errors_alone(tmp_path):
    rego = _copy_rego(tmp_path)
    crash = rego / "agentsidecar/authz/crash_test.rego"
    crash.write_text(  # (not of the constant shape policy test decides directly: see below)
        "package agentsidecar.authz_test\n\nimport rego.v1\n\n"
        "test_whole_input_with if {\n"
        '\tx := data.agentsidecar.authz.decision with input as {"version": 1}\n'
        '\tx.effect == "deny"\n'
        "}\n"
    )
    done = cli("policy", "test", str(rego))
    assert done.returncode == 1
    assert "whole-document `with input as`" in done.stderr  # warned before running
    assert "ERROR: data.agentsidecar.authz_test.test_whole_input_with" in done.stdout
    # Depending on the engine build it fails the file's evaluation or aborts the worker.
    assert (
        "could not evaluate this test file" in done.stdout
        or "crashed evaluating this test (signal SIGABRT)" in done.stdout
        or "test worker failed" in done.stdout
    )
    summary = done.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert passed >= 18 and summary.endswith("1 failed")


def test_a_whole_input_with_of_constants_is_decided_as_serve_decides(tmp_path):
    """The same form with constants only (``ref == constant with input as {...}``) is what
    policy test decides without ``with`` (one plan, the input set, as serve decides a call;
    issue 30): it no longer reaches rego-cpp's crash and passes, as on OPA."""
    rego = _copy_rego(tmp_path)
    (rego / "agentsidecar/authz/crash_test.rego").write_text(
        "package agentsidecar.authz_test\n\nimport rego.v1\n\n"
        "test_whole_input_with if {\n"
        '\tdata.agentsidecar.authz.decision.effect == "deny" with input as {"version": 1}\n'
        "}\n"
    )
    done = cli("policy", "test", str(rego))
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")


def test_an_unsupported_builtin_stops_the_run_with_exit_2(tmp_path):
    rego = _copy_rego(tmp_path)
    (rego / "agentsidecar/authz/extra.rego").write_text(
        "package agentsidecar.authz\n\nimport rego.v1\n\n"
        'fetched := http.send({"method": "get", "url": "https://example.com"})\n'
    )
    done = cli("policy", "test", str(rego))
    assert done.returncode == 2
    assert "http.send" in done.stderr and "extra.rego:5" in done.stderr
    assert "policy.engine: opa" in done.stderr


def test_check_prints_the_decision_as_json(tmp_path):
    doc = sample_input(
        name="payments.refund", operation="act", target="payments", arguments={"amount": 250}
    )
    doc["task"] = {"id": "t-1", "intent": "refunds", "calls": 0, "tokens": 0, "age_s": 1.0}
    (tmp_path / "input.json").write_text(json.dumps(doc))
    done = cli(
        "check", "--config", "examples/demo/config.yaml", "--input", str(tmp_path / "input.json")
    )
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["effect"] == "step_up"
    assert decision["code"] == "approval_required"
    assert decision["reasons"] == ["payments.refund needs approval when amount is above 100"]
    assert len(decision["policy_revision"]) == 32


def test_a_bad_config_is_exit_2_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("identity: {mode: static, spiffe_id: 'spiffe://x/y'}\npolicy: {engin: opa}\n")
    done = cli("serve", "--config", str(bad))
    assert done.returncode == 2
    assert f"{bad}: policy.engin: unknown key" in done.stderr


def test_pod_mode_without_a_workload_api_socket_is_exit_2(tmp_path):
    config = tmp_path / "pod.yaml"
    config.write_text(f"identity: {{mode: pod}}\npolicy: {{dir: {ROOT / 'rego'}}}\n")
    import os

    env = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "identity.socket" in done.stderr and "SPIFFE_ENDPOINT_SOCKET" in done.stderr


def test_health_reports_the_sidecars_grpc_health(sidecar):
    done = cli("health", "--addr", sidecar.address)
    assert done.returncode == 0 and done.stdout.strip() == "SERVING"
    gone = cli("health", "--addr", "unix:/nonexistent/agent.sock", "--timeout", "0.5")
    assert gone.returncode == 1 and "not serving" in gone.stderr


def test_serve_set_overrides_are_validated_like_the_file(tmp_path):
    done = cli("serve", "--config", "examples/demo/config.yaml", "--set", "policy.engine=wasm")
    assert done.returncode == 2
    assert "policy.engine: 'wasm' is not one of embedded, opa" in done.stderr
    bad = cli("serve", "--config", "examples/demo/config.yaml", "--set", "nokey")
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr
