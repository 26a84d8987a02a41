"""Worker process of the Rego test runner: test refs on stdin, one JSON event a line out.

Kept separate so that a crash inside rego-cpp ends this process, not the runner. Each test file
is compiled in small batches (``_test_slices``: the file cut down to a batch's tests, at most
``WITH_BUDGET`` ``with`` clauses), every test of a batch an entrypoint of one bundle, and each
batch's program is dropped before the next is built: rego-cpp compiles a copy of the policy
for every ``with`` expression it is given, so one bundle of the whole suite peaked at 2.9 GB.
A batch that does not compile falls back to its whole file, so a file rego-cpp cannot compile
fails only its own tests.

The protocol has its own file descriptor: the engine sometimes writes to standard output (an
object key conflict does), so fd 1 is pointed at stderr before anything is loaded.

The runner has vetted the whole module set (``vet.enforce``: OPA's compiler where available)
before it starts workers, so they do not again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from sidecar.policy._rego import EvalError, compile_entrypoints, query_entrypoint, query_once
from sidecar.policy._rego_input import UnrepresentableInput, set_input
from sidecar.policy._test_direct import Check, Unsupported, equal
from sidecar.policy._test_explain import explain_failure
from sidecar.policy._test_slices import batches
from sidecar.policy.compat import RegoModule
from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.source import load_policy_dir

_NO_OUTPUT = (
    "the embedded engine (rego-cpp) could not evaluate this test file; if the runner warned "
    "about a `with` form in it, rewrite that form, or run this file with `opa test`"
)


def main(policy_dir: str, out: TextIO) -> int:
    source = load_policy_dir(policy_dir, include_tests=True)
    policy = [m for m in source.modules if not m.path.endswith("_test.rego")]
    tests = {m.path: m for m in source.modules if m.path.endswith("_test.rego")}
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    direct = _Direct(policy, source.data)
    plans = _plans()
    by_file: dict[str, list[str]] = {}
    for file, ref in requests:
        if plans.get(ref):
            direct.add(ref, [Check.from_json(c) for c in plans[ref]])
        by_file.setdefault(file, []).append(ref)
    for file, all_refs in by_file.items():
        refs = [r for r in all_refs if not direct.run(out, r)]  # the rest: rego-cpp's `with`
        whole: list[Any] = []  # the whole file's program, built only if a slice fails

        def whole_file(file: str = file, refs: list[str] = refs, whole: list[Any] = whole) -> Any:
            if not whole:
                whole.append(
                    compile_entrypoints([*policy, tests[file]], source.data, refs, vet=False)
                )
            return whole[0]

        for batch in batches(tests[file], refs) if refs else []:
            try:
                program: Any = compile_entrypoints(
                    [*policy, batch.module], source.data, list(batch.refs), vet=False
                )
            except (PolicyLoadError, EvalError):
                program = None  # the slice is not trusted: the whole file, on first use
            for ref in batch.refs:
                _run_one(out, tests[file], ref, program, whole_file)
            del program  # rego-cpp frees the batch's copies before the next is compiled
            _trim()
    return 0


def _run_one(
    out: TextIO, module: RegoModule, ref: str, program: Any, whole_file: Callable[[], Any]
) -> None:
    _emit(out, {"event": "start", "ref": ref})
    started = time.perf_counter()
    outcome, message = "ERROR", ""
    try:
        if program is None:
            program = whole_file()
        try:
            defined, value = query_entrypoint(program, ref)
        except EvalError:
            # the slice may be what the engine chokes on: the whole file decides
            program = whole_file()
            defined, value = query_entrypoint(program, ref)
    except PolicyLoadError as exc:
        message = f"does not compile: {exc}"
    except EvalError as exc:
        message = _NO_OUTPUT if "returned no output" in str(exc) else str(exc)
    else:
        if defined and value is True:
            outcome = "PASS"
        else:
            outcome = "FAIL"
            message = "undefined" if not defined else f"got {value!r}"
            detail = explain_failure(module, ref, lambda q, p=program: query_once(p[0], q))
            if detail:
                message = detail
    _emit(
        out,
        {
            "event": "result",
            "ref": ref,
            "outcome": outcome,
            "duration_s": time.perf_counter() - started,
            "message": message,
        },
    )


def _plans() -> dict[str, Any]:
    """The runner's direct plans (``_test_direct``), by ref; none if it gave no file."""
    path = os.environ.get("AGENT_SIDECAR_TEST_PLANS")
    if not path:
        return {}
    with open(path) as handle:
        plans = json.load(handle)
    return plans if isinstance(plans, dict) else {}


class _Direct:
    """Tests of the usual shape (``_test_direct``): the policy compiled once per distinct data,
    the input set, the rule read; no ``with``. An input with a number the input guard refuses is
    an ERROR, as ``serve`` refuses it (rego-cpp's ``with`` compared it inexactly: a FAIL where
    OPA passes); anything else it cannot decide so (a data patch below a non-object, an engine
    error) goes back to ``with``."""

    def __init__(self, policy: list[RegoModule], data: Any) -> None:
        self._policy = policy
        self._data = data
        self._checks: dict[str, list[Check]] = {}
        self._rules: dict[str, set[str]] = {}  # data key -> rules read under it
        self._programs: dict[str, Any] = {}

    def add(self, ref: str, checks: list[Check]) -> None:
        self._checks[ref] = checks
        for check in checks:
            self._rules.setdefault(_dumps(check.data), set()).add(check.rule)

    def _program(self, check: Check) -> Any:
        key = _dumps(check.data)
        if key not in self._programs:
            if len(self._programs) >= 4:  # bounded: each holds a compiled policy
                self._programs.pop(next(iter(self._programs)))
                _trim()
            rules = sorted(self._rules[key])
            data = check.data_document(self._data)
            self._programs[key] = compile_entrypoints(
                self._policy, data, [f"data.{r}" for r in rules], vet=False
            )
        return self._programs[key]

    def run(self, out: TextIO, ref: str) -> bool:
        """Decide ``ref`` directly and report it; False if it must go through ``with``."""
        checks = self._checks.get(ref)
        if checks is None:
            return False
        started = time.perf_counter()
        failure, outcome = "", "PASS"
        try:
            for check in checks:
                interp, _ = program = self._program(check)
                set_input(interp._impl, interp.set_input_term, check.input_document())
                defined, value = query_entrypoint(program, f"data.{check.rule}")
                for part in check.path:
                    defined = defined and isinstance(value, dict) and part in value
                    value = value[part] if defined else None
                if not (defined and equal(value, check.expected)):
                    where = ".".join(["data", check.rule, *check.path])
                    shown = _dumps(value) if defined else "undefined"
                    failure = (
                        f"expected: {_dumps(check.expected)}\n    actual:   {shown}   ({where})"
                    )
                    outcome = "FAIL"
                    break
        except UnrepresentableInput as exc:  # what `serve` would do with this input
            outcome = "ERROR"
            failure = f"{exc}: `serve` refuses such an input before policy (input_unrepresentable)"
        except (Unsupported, PolicyLoadError, EvalError, TypeError):
            return False
        _emit(out, {"event": "start", "ref": ref})
        _emit(
            out,
            {
                "event": "result",
                "ref": ref,
                "outcome": outcome,
                "duration_s": time.perf_counter() - started,
                "message": failure,
            },
        )
        return True


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _trim() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise, and the next batch's
    allocations fragment around it)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _emit(out: TextIO, event: dict[str, object]) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


if __name__ == "__main__":
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.exit(main(sys.argv[1], protocol))
