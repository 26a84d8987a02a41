"""Issue 30, deliverables 2 and 3: ``policy.require_opa_compiler``, and OPA's compiler run in
a short-lived child process (time-bounded, failing closed when required), so Go's runtime is
not resident in the process that serves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.components import build_engine
from sidecar.config import ConfigError, parse_settings
from sidecar.policy import EmbeddedEngine, opa_compiler
from sidecar.policy.errors import CompileError
from sidecar.policy.settings import PolicySettings
from sidecar.policy.vet import OpaCompilerRequired
from sidecar.policy.vet_options import REQUIRE_ENV, VetOptions
from tests.conftest import REGO

QUERY = "data.p.allow"
# OPA's compiler takes exponential time on nested set comprehensions (16 levels: ~2 s; 24
# would take minutes): a real compiler process that does not answer in time.
SLOW = (
    "allow if count([x | some x in "
    + "".join(f"{{y{i} | some y{i} in " for i in range(24))
    + "input.groups"
    + "}" * 24
    + "]) > 0"
)


def _policy(root: Path, body: str = "allow if input.x == 1") -> Path:
    (root / "p").mkdir(parents=True, exist_ok=True)
    (root / "p" / "p.rego").write_text(f"package p\n\n{body}\n")
    return root


def _absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opa_compiler, "unavailable_reason", lambda: "removed by the test")


def _settings(tmp_path: Path, policy: dict) -> object:
    raw = {"policy": {"dir": str(_policy(tmp_path / "policy")), "query": QUERY, **policy}}
    return parse_settings(raw, source=tmp_path / "sidecar.yaml")


def test_item2_require_opa_compiler_refuses_a_load_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    _absent(monkeypatch)
    settings = _settings(tmp_path, {"require_opa_compiler": True})
    with pytest.raises(OpaCompilerRequired) as refused:
        build_engine(settings)  # what `serve` builds
    message = str(refused.value)
    assert "policy.require_opa_compiler" in message
    assert "removed by the test" in message and "lexical scan only" in message


def test_item2_default_falls_back_with_a_loud_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    _absent(monkeypatch)
    monkeypatch.setattr("sidecar.policy.vet._warned", set())
    settings = _settings(tmp_path, {})
    assert settings.policy.require_opa_compiler is False
    with caplog.at_level(logging.WARNING, logger="sidecar.policy.vet"):
        build_engine(settings).close()
    assert any("lexical scan only" in r.getMessage() for r in caplog.records)


def test_item2_the_environment_variable_only_tightens(tmp_path, monkeypatch):
    _absent(monkeypatch)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(OpaCompilerRequired):
        build_engine(_settings(tmp_path, {"require_opa_compiler": False}))
    monkeypatch.setenv(REQUIRE_ENV, "0")  # not a way to relax the setting
    with pytest.raises(OpaCompilerRequired):
        build_engine(_settings(tmp_path, {"require_opa_compiler": True}))


def test_item2_a_reload_without_the_compiler_keeps_the_old_revision(
    opa_available, tmp_path, monkeypatch
):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    root = _policy(tmp_path / "reload")
    vetting = VetOptions(require_opa_compiler=True)
    engine = EmbeddedEngine.from_dir(root, QUERY, workers=1, vetting=vetting)
    try:
        before = engine.revision
        _absent(monkeypatch)
        (root / "p" / "p.rego").write_text("package p\n\nallow if input.x == 3\n")
        with pytest.raises(OpaCompilerRequired):
            engine.reload()
        assert engine.revision == before
        assert engine.evaluate_sync({"x": 1}).value is True  # still the vetted revision
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ({"require_opa_compiler": "yes"}, "require_opa_compiler"),
        ({"require_opa_compiler": 1}, "require_opa_compiler"),
        ({"opa_compiler_timeout_ms": 0}, "opa_compiler_timeout_ms"),
        ({"opa_compiler_timeout_ms": 10**9}, "opa_compiler_timeout_ms"),
        ({"opa_compiler_in_process": "no"}, "opa_compiler_in_process"),
    ],
)
def test_item2_bad_settings_are_refused_clearly(tmp_path, policy, error):
    with pytest.raises(ConfigError, match=error):
        _settings(tmp_path, policy)


def test_item2_with_the_compiler_required_loads_are_vetted_by_opa(opa_available, tmp_path):
    vetting = PolicySettings(require_opa_compiler=True).vetting
    assert vetting.required and vetting.isolate
    EmbeddedEngine.from_dir(_policy(tmp_path / "ok"), QUERY, workers=1, vetting=vetting).close()
    bad = _policy(tmp_path / "bad", "allow {\n\tinput.x == 1\n}")  # v0: OPA's parse error
    with pytest.raises(CompileError, match="OPA's compiler"):
        EmbeddedEngine.from_dir(bad, QUERY, workers=1, vetting=vetting)


_PROBE = textwrap.dedent(
    """
    import json, sys
    import sidecar
    from sidecar.policy import EmbeddedEngine
    from sidecar.policy.vet_options import VetOptions
    engine = EmbeddedEngine.from_dir(
        sys.argv[1], "data.agentsidecar.authz.decision", workers=2,
        vetting=VetOptions(require_opa_compiler=True, isolate=sys.argv[2] == "child"),
    )
    assert engine.evaluate_sync({}).defined
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    maps = open("/proc/self/maps").read()
    print(json.dumps({"go": "libopabridge" in maps, "threads": int(status["Threads"]),
                      "rss_kb": int(status["VmRSS"].split()[0])}))
    """
)


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REGO), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_item3_vetting_leaves_no_go_runtime_in_the_loading_process(opa_available):
    child, here = _probe("child"), _probe("in_process")
    assert child["go"] is False and here["go"] is True
    assert child["threads"] < here["threads"]  # Go's runtime threads (5 measured)


def test_item3_a_compiler_that_does_not_answer_is_killed_and_fails_closed(
    opa_available, tmp_path, monkeypatch
):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    root = _policy(tmp_path / "slow", SLOW)
    required = VetOptions(require_opa_compiler=True, timeout_s=1.0)
    with pytest.raises(OpaCompilerRequired, match=r"did not answer within 1 s \(killed\)"):
        EmbeddedEngine.from_dir(root, QUERY, workers=1, vetting=required)
    # not required: the lexical checks, with the warning (the policy itself is fine)
    relaxed = VetOptions(require_opa_compiler=False, timeout_s=1.0)
    EmbeddedEngine.from_dir(root, QUERY, workers=1, vetting=relaxed).close()
    leftover = subprocess.run(
        ["pgrep", "-f", "-P", str(os.getpid()), "sidecar.policy.opa_compiler"],
        capture_output=True,
        check=False,
    )
    assert leftover.stdout == b"", "the timed-out compiler process was not reaped"


def test_item3_a_compiler_process_that_dies_fails_closed(opa_available, tmp_path, monkeypatch):
    """A compiler process that dies without an answer (killed by a signal) is not trusted."""
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    monkeypatch.setattr(
        opa_compiler,
        "_CHILD",
        (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
    )
    root = _policy(tmp_path / "dies", "allow if input.x == 2")
    with pytest.raises(OpaCompilerRequired, match="OPA's compiler process failed"):
        EmbeddedEngine.from_dir(
            root, QUERY, workers=1, vetting=VetOptions(require_opa_compiler=True)
        )


@pytest.mark.parametrize(
    "answer",
    [
        "not json",
        "[1, 2]",
        '{"findings": [], "asts": []}',  # no AST for the module
        '{"findings": [["p.rego"]], "asts": []}',  # a finding of the wrong shape
        '{"unavailable": "the Go library did not load"}',
    ],
)
def test_item3_a_malformed_answer_is_not_trusted(opa_available, tmp_path, monkeypatch, answer):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    monkeypatch.setattr(
        opa_compiler,
        "_CHILD",
        (sys.executable, "-c", f"import sys; sys.stdin.read(); sys.stdout.write({answer!r})"),
    )
    root = _policy(tmp_path / "malformed", f"allow if input.x == {len(answer)}")
    with pytest.raises(OpaCompilerRequired, match="OPA's compiler"):
        EmbeddedEngine.from_dir(
            root, QUERY, workers=1, vetting=VetOptions(require_opa_compiler=True)
        )
