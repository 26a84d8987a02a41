"""Worker process of the Rego test runner: test refs on stdin, one JSON event a line out.

Kept separate so that a crash inside rego-cpp ends this process, not the runner. The policy
and every test file are compiled once, into one bundle with every test as an entrypoint
(rego-cpp compiles an ad-hoc query, and the whole module set with it, on every ``query``:
0.6 s a test). If the files do not compile together, each test file gets its own bundle, so
one file rego-cpp cannot compile fails only its own tests.

The protocol has its own file descriptor: the engine sometimes writes to standard output (an
object key conflict, for one), so fd 1 is pointed at stderr before anything is loaded.

The runner has vetted the whole module set (``vet.enforce``: OPA's compiler where available)
before it starts workers, so they do not again (each would load OPA's Go runtime).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from sidecar.policy._rego import EvalError, compile_entrypoints, query_entrypoint, query_once
from sidecar.policy._test_explain import explain_failure
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
    files = sorted({file for file, _ in requests})
    shared: Any = None
    if len(files) > 1:
        try:
            modules = [*policy, *(tests[f] for f in files)]
            shared = compile_entrypoints(
                modules, source.data, [ref for _, ref in requests], vet=False
            )
        except (PolicyLoadError, EvalError):
            pass  # compiled per file, on first use, below
    own: dict[str, Any] = {}

    def per_file(file: str) -> Any:
        if file not in own:
            refs = [r for f, r in requests if f == file]
            own[file] = compile_entrypoints([*policy, tests[file]], source.data, refs, vet=False)
        return own[file]

    for file, ref in requests:
        _emit(out, {"event": "start", "ref": ref})
        started = time.perf_counter()
        outcome, message = "ERROR", ""
        try:
            program = shared if shared is not None else per_file(file)
            try:
                defined, value = query_entrypoint(program, ref)
            except EvalError:
                if program is not shared:
                    raise
                # Another file in the shared program may be what the engine chokes on.
                program = per_file(file)
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
                detail = explain_failure(tests[file], ref, lambda q, p=program: query_once(p[0], q))
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
    return 0


def _emit(out: TextIO, event: dict[str, object]) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


if __name__ == "__main__":
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.exit(main(sys.argv[1], protocol))
