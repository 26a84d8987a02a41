"""The embedded engine: exact values in and out, strict errors, refusal of what it lacks,
parallel evaluation without cross-talk, and timeouts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sidecar.policy import (
    CompileError,
    DecisionError,
    EmbeddedEngine,
    PolicyLoadError,
    UnsupportedBuiltinError,
)
from sidecar.policy.source import load_policy_dir

ROOT = Path(__file__).resolve().parents[2]


def _engine(tmp_path: Path, rego: str, data: dict | None = None, **kwargs) -> EmbeddedEngine:
    directory = tmp_path / "policy" / "p"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{rego}\n")
    if data is not None:
        (directory / "data.json").write_text(json.dumps(data))
    return EmbeddedEngine.from_dir(tmp_path / "policy", "data.p.out", **kwargs)


TRICKY = [
    "",
    'a"b',
    "\\",
    '\\"',
    "\x00",
    "\x01\x1f",
    "\u2028",
    "😀",
    "é",
    "</x>",
    '{"a":1}',
    "tab\tnl\n",
    1.5,
    -0.0,
    1e300,
    -(2**53),
    2**53,  # beyond: refused per call (issue 30, tests/oracle/test_issue30_exact.py)
    1e-7,
    123.456789012345,
    0.1,
    True,
    None,
    [],
    {},
]


@pytest.mark.parametrize("value", TRICKY, ids=range(len(TRICKY)))
def test_every_json_value_round_trips_exactly(tmp_path, value):
    engine = _engine(tmp_path, 'out := {"v": input.v, "k": object.keys(input.o)}')
    key = value if isinstance(value, str) else json.dumps(value)
    result = engine.evaluate_sync({"v": value, "o": {key: 1}})
    assert result.defined
    assert result.value == {"v": value, "k": [key]}


def test_undefined_is_reported_as_undefined(tmp_path):
    engine = _engine(tmp_path, "out := 1 if input.never")
    assert engine.evaluate_sync({}).defined is False


def test_builtin_errors_are_errors_not_undefined(tmp_path):
    engine = _engine(tmp_path, 'out := base64url.decode("%%%")')
    with pytest.raises(DecisionError) as error:
        engine.evaluate_sync({})
    assert error.value.code == "policy_error"


@pytest.mark.parametrize(
    "call",
    [
        'http.send({"method": "get", "url": "x"})',
        'net.cidr_contains("10.0.0.0/8", input.ip)',
        "print(1)",
        "foo.bar(1)",
    ],
)
def test_a_builtin_the_engine_lacks_is_refused_at_load_naming_it(tmp_path, call):
    """``print`` as a value and an undefined function are OPA compile errors: where OPA's
    compiler is available they are refused with its message (``CompileError``)."""
    with pytest.raises((UnsupportedBuiltinError, CompileError)) as error:
        _engine(tmp_path, f"out := x if {{\n\tx := {call}\n}}")
    name = call.split("(")[0]
    assert name in str(error.value) and "p.rego:6" in str(error.value)
    if isinstance(error.value, UnsupportedBuiltinError):
        assert error.value.builtin == name
        assert "policy.engine: opa" in str(error.value)


def test_policy_defined_functions_and_strings_are_not_builtins(tmp_path):
    rego = (
        "f(x) := y if { y := x + 1 }\n"
        'out := {"n": f(1), "s": "http.send(1)", "u": trim(" A ", " ")} # print(2)\n'
    )
    assert _engine(tmp_path, rego).evaluate_sync({}).value == {
        "n": 2,
        "s": "http.send(1)",
        "u": "A",
    }


def test_a_policy_that_does_not_compile_is_a_load_error(tmp_path):
    with pytest.raises(PolicyLoadError, match=r"p\.rego"):
        _engine(tmp_path, "out := [1")


def test_data_json_is_mounted_at_its_directory(tmp_path):
    engine = _engine(tmp_path, "out := data.p.grants", data={"grants": ["a"]})
    assert engine.evaluate_sync({}).value == ["a"]


def test_revision_is_a_content_hash(tmp_path):
    a = load_policy_dir(ROOT / "rego").revision
    assert a == load_policy_dir(ROOT / "rego").revision
    engine = _engine(tmp_path, "out := 1")
    before = engine.revision
    (tmp_path / "policy" / "p" / "p.rego").write_text("package p\n\nimport rego.v1\n\nout := 2\n")
    assert load_policy_dir(tmp_path / "policy").revision != before


def test_parallel_evaluations_never_cross_inputs(tmp_path):
    engine = _engine(
        tmp_path, 'out := {"n": input.n, "s": sprintf("%v%v", [input.n, input.n])}', workers=4
    )

    async def run():
        results = await asyncio.gather(
            *(engine.evaluate({"n": n}, timeout_s=10) for n in range(400))
        )
        return [r.value for r in results]

    values = asyncio.run(run())
    assert values == [{"n": n, "s": f"{n}{n}"} for n in range(400)]
    engine.close()


def test_a_slow_evaluation_times_out(tmp_path):
    engine = _engine(tmp_path, "out := count([x | some x in numbers.range(1, 300000); x != 7])")

    async def run():
        await engine.evaluate({}, timeout_s=0.01)

    with pytest.raises(DecisionError) as error:
        asyncio.run(run())
    assert error.value.code == "policy_timeout"


def test_served_policy_excludes_test_files():
    source = load_policy_dir(ROOT / "rego")
    assert not any(m.path.endswith("_test.rego") for m in source.modules)
    assert any(
        m.path.endswith("_test.rego")
        for m in load_policy_dir(ROOT / "rego", include_tests=True).modules
    )
