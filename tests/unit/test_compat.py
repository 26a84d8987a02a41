"""The lexical scan behind built-in refusal and the rego-cpp `with` warnings."""

from __future__ import annotations

from sidecar.policy.compat import RegoModule, check_builtins, find_calls, risky_with_forms


def _mod(body: str, package: str = "p") -> RegoModule:
    return RegoModule(
        path=f"{package}.rego", source=f"package {package}\n\nimport rego.v1\n\n{body}\n"
    )


def test_calls_in_strings_comments_and_definitions_are_ignored():
    module = _mod('f(x) := x\n# g(1)\ns := "h(1)"\nr := `k(1)`\nout := f(1)\ndefault z(_) := 1\n')
    assert [c.name for c in find_calls(module)] == ["f"]


def test_calls_report_their_line():
    module = _mod('a := 1\nb := lower("X")')
    [call] = find_calls(module)
    assert (call.name, call.line) == ("lower", 6)


def test_imported_and_data_functions_resolve_to_the_defining_package():
    lib = _mod("double(x) := x * 2", package="lib")
    user = _mod("import data.lib\nout := lib.double(2)\nalso := data.lib.double(3)", package="u")
    check_builtins([lib, user], lambda name: False)  # no built-in needed


def test_an_undefined_imported_function_is_refused():
    lib = _mod("double(x) := x * 2", package="lib")
    user = _mod("import data.lib\nout := lib.triple(2)", package="u")
    try:
        check_builtins([lib, user], lambda name: True)
    except Exception as exc:
        assert "lib.triple" in str(exc)
    else:
        raise AssertionError("an undefined function was accepted")


def test_risky_with_forms_are_found():
    module = _mod(
        "_s := {}\n"
        "test_a if { data.x with input as {} }\n"
        "test_b if { data.x with input.a as _f(1) }\n"
        "test_c if { data.x with input.a as _s }\n"
        'test_d if { data.x with input.a as {"ok": 1} }\n'
    )
    lines = [line for line, _ in risky_with_forms(module)]
    assert lines == [6, 7, 8]
