"""Issue 30, deliverable 1: what a module means is decided by OPA's compiler and AST, not by a
text scan. Each program below passed ``policy check`` with "0 problems" on the lexical checks
(asserted here by running them: ``lexical``), and loaded into ``serve``; now the check reports
it, every load (``serve``, reload, ``policy test``) refuses it, with OPA's message and line
where it is a compile error."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sidecar.policy import CompileError, EmbeddedEngine, PolicyLoadError, opa_compiler
from sidecar.policy.check import check_policy
from sidecar.policy.compat import RegoModule
from sidecar.policy.testing import run_tests
from sidecar.policy.vet import REQUIRE_ENV, OpaCompilerRequired, vet
from tests.oracle.conftest import Opa, OpaError
from tests.support.cli import cli

QUERY = "data.p.allow"

# name -> ({file: body after the package line}, the finding now, OPA refuses it at compile)
CASES: dict[str, tuple[dict[str, str], str, bool]] = {
    "r1_not_split_over_two_lines": (
        {"p.rego": "allow if {\n\tnot is_number(\n\t\tinput.x)\n}"},
        "not-undefined",
        False,
    ),
    "r1_not_over_a_rule_in_another_file": (
        {
            "p.rego": "allow if {\n\tnot _f(_x)\n}\n\n_f(v) if v == 1",
            "q.rego": "_x := input.x",
        },
        "not-undefined",
        False,
    ),
    "r3_object_get_compared": (
        {"p.rego": 'allow if object.get(input, "x", 0) > 100'},
        "untyped-comparison",
        False,
    ),
    "r3_is_string_then_compared_to_a_number": (
        {"p.rego": "allow if {\n\tx := input.x\n\tis_string(x)\n\tx > 100\n}"},
        "untyped-comparison",
        False,
    ),
    "r3_max_over_mixed_types": (
        {"p.rego": "allow if max([input.x, 0]) > 100"},
        "untyped-comparison",
        False,
    ),
    "call_at_column_0_followed_by_eq": (
        {"p.rego": 'allow if {\nlower(input.x) == "tickets.get"\n}'},
        "divergent-builtin",
        False,
    ),
    "type_error_across_rules": (
        {"p.rego": "_n := 1\n\nallow if count(_n) > 0"},
        "compile",
        True,
    ),
}

V0_BODY = {"p.rego": "allow {\n\tinput.x == 1\n}"}


def _policy(root: Path, files: dict[str, str]) -> Path:
    (root / "p").mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (root / "p" / name).write_text(f"package p\n\n{body}\n")
    return root


def _lexical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opa_compiler, "unavailable_reason", lambda: "disabled by the test")


@pytest.mark.parametrize(("files", "rule", "compile_error"), CASES.values(), ids=list(CASES))
def test_item30_checked_by_the_compiler_not_by_text(
    opa_available, monkeypatch, tmp_path, files, rule, compile_error
):
    root = _policy(tmp_path / "policy", files)
    if compile_error:  # OPA itself refuses it: asserted, so the corpus stays honest
        with pytest.raises(OpaError):
            Opa([(f"p/{n}", f"package p\n\n{b}\n") for n, b in files.items()], {}).query(QUERY)
    findings = check_policy(root, QUERY)
    assert rule in {f.rule for f in findings}, [str(f) for f in findings]
    if compile_error:
        assert all("(OPA's compiler)" in str(f) for f in findings if f.rule == "compile")
    with pytest.raises(PolicyLoadError):  # what `serve` and every reload build
        EmbeddedEngine.from_dir(root, QUERY, workers=1)
    with monkeypatch.context() as patched:  # the old, lexical checker: walked around
        _lexical(patched)
        assert rule not in {f.rule for f in check_policy(root, QUERY)}


def test_item30_v0_body_is_refused_by_check_test_and_serve(opa_available, tmp_path):
    root = _policy(tmp_path / "policy", V0_BODY)
    (root / "p" / "p_test.rego").write_text(
        "package p_test\n\nimport data.p\n\ntest_allow if p.allow with input as {}\n"
        "\ntest_missing_x if not p.allow with input as {}\n"
    )
    findings = check_policy(root, QUERY)
    assert [f.message for f in findings if f.rule == "compile"] == [
        "rego_parse_error: `if` keyword is required before rule body (OPA's compiler)"
    ]
    assert {f.line for f in findings if f.rule == "compile"} == {3}
    with pytest.raises(CompileError, match=r"p\.rego:3: rego_parse_error"):
        run_tests(root)
    with pytest.raises(CompileError, match=r"p\.rego:3: rego_parse_error"):
        EmbeddedEngine.from_dir(root, QUERY, workers=1)


def test_item30_serve_refuses_with_opas_message(opa_available, tmp_path):
    policy = _policy(tmp_path / "policy", V0_BODY)
    (tmp_path / "c.yaml").write_text(
        f"server:\n  listen: ['unix://{tmp_path}/agent.sock']\nadmin:\n  listen: ''\n"
        f"audit:\n  path: {tmp_path}/audit.log\npolicy:\n  dir: {policy}\n  query: {QUERY}\n"
    )
    proc = cli("serve", "--config", str(tmp_path / "c.yaml"), timeout=60)
    assert proc.returncode != 0
    assert (
        f"{policy}/p/p.rego:3: rego_parse_error: `if` keyword is required before rule body "
        "(OPA's compiler)" in proc.stderr
    )


def test_item30_reload_keeps_the_old_revision_when_opa_refuses(opa_available, tmp_path):
    root = _policy(tmp_path / "policy", {"p.rego": "allow if input.x == 1"})
    engine = EmbeddedEngine.from_dir(root, QUERY, workers=1)
    before = engine.revision
    _policy(root, CASES["type_error_across_rules"][0])
    with pytest.raises(CompileError, match="rego_type_error"):
        engine.reload()
    assert engine.revision == before
    assert engine.evaluate_sync({"x": 1}).value is True
    engine.close()


@pytest.mark.parametrize(
    "source",
    [
        "package p\n\nallow if \x00 true\n",  # a NUL: refused before it reaches Go
        "package p\n\nallow if {\n" + "\t" + "(" * 5000 + "1" + ")" * 5000 + " == 1\n}\n",
        "package p\n\nallow if {{{\n",
        "package\n",
        "",
    ],
    ids=["nul", "deep-nesting", "unbalanced", "no-package-name", "empty"],
)
def test_item30_hostile_modules_are_refused_with_a_position(opa_available, source):
    result = vet([RegoModule("hostile.rego", source)], {})
    assert result.checker == "opa"
    if "((" in source:  # deep but valid: OPA compiles it; nothing to refuse
        assert result.compile_errors == () or all(e.file for e in result.compile_errors)
        return
    assert result.compile_errors, source
    assert all(e.file == "hostile.rego" for e in result.compile_errors)


def test_item30_a_large_policy_is_vetted_whole(opa_available):
    rules = "\n".join(f'_r{i} if input.k == "{i}"' for i in range(3000))
    module = RegoModule("big.rego", f'package p\n\n{rules}\n\nallow if lower(input.x) == "a"\n')
    result = vet([module], {})
    assert [i.builtin for i in result.issues] == ["lower"]
    assert result.issues[0].line == 3004


def test_item30_concurrent_loads_each_get_their_own_answer(opa_available):
    """Reloads race with other loads in threads: every one gets the answer for its modules."""
    good = [
        RegoModule(f"g{i}.rego", f"package g{i}\n\nallow if input.x == {i}\n") for i in range(8)
    ]
    bad = [
        RegoModule(f"b{i}.rego", f"package b{i}\n\nallow {{ input.x == {i} }}\n") for i in range(8)
    ]
    answers: dict[str, bool] = {}
    lock = threading.Lock()

    def work(module: RegoModule) -> None:
        refused = bool(vet([module], {}).compile_errors)
        with lock:
            answers[module.path] = refused

    threads = [threading.Thread(target=work, args=(m,)) for m in good + bad]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {**{m.path: False for m in good}, **{m.path: True for m in bad}}


def test_item30_without_opas_compiler_the_load_warns_or_fails_closed(monkeypatch, tmp_path, caplog):
    root = _policy(tmp_path / "policy", {"p.rego": "allow if input.x == 1"})
    _lexical(monkeypatch)
    monkeypatch.setattr("sidecar.policy.vet._warned", set())
    with caplog.at_level("WARNING", logger="sidecar.policy.vet"):
        EmbeddedEngine.from_dir(root, QUERY, workers=1).close()
    assert "NOT checked" in caplog.text and "disabled by the test" in caplog.text
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(OpaCompilerRequired, match="lexical scan only"):
        EmbeddedEngine.from_dir(root, QUERY, workers=1)
    assert {f.rule for f in check_policy(root, QUERY)} == {"opa-compiler"}


def test_item30_a_process_forked_after_opa_was_used_still_checks(opa_available):
    """Go's runtime hangs in a forked child that calls it; the child asks a fresh process."""
    vet([RegoModule("warm.rego", "package warm\n\nallow if input.x == 1\n")], {})  # Go started
    pid = os.fork()
    if pid == 0:  # the child: a module set never seen (no cache), must be refused
        try:
            module = RegoModule("child.rego", "package child\n\nallow {\n\tinput.x == 1\n}\n")
            result = vet([module], {})
            os._exit(0 if result.compile_errors and result.checker == "opa" else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 120  # generous: a hang is what this test catches
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            return
        threading.Event().wait(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung calling OPA's compiler")
