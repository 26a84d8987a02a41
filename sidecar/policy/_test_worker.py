"""Worker process of the Rego test runner: test refs on stdin, one JSON event a line out.

Kept separate so that a crash inside rego-cpp ends this process, not the runner. Each test
file gets its own interpreter (the policy plus that file), because one file that rego-cpp
cannot compile makes every query of its interpreter fail.
"""

from __future__ import annotations

import json
import sys
import time

from sidecar.policy._rego import EvalError, new_interpreter, query_once
from sidecar.policy.source import load_policy_dir

_NO_OUTPUT = (
    "the embedded engine (rego-cpp) could not evaluate this test file; if the runner warned "
    "about a `with` form in it, rewrite that form, or run this file with `opa test`"
)


def main(policy_dir: str) -> int:
    source = load_policy_dir(policy_dir, include_tests=True)
    policy = [m for m in source.modules if not m.path.endswith("_test.rego")]
    tests = {m.path: m for m in source.modules if m.path.endswith("_test.rego")}
    interpreters: dict[str, object] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        file, ref = json.loads(line)
        _emit({"event": "start", "ref": ref})
        started = time.perf_counter()
        if file not in interpreters:
            interpreters[file] = new_interpreter([*policy, tests[file]], source.data)
        try:
            defined, value = query_once(interpreters[file], ref)
        except EvalError as exc:
            message = _NO_OUTPUT if "returned no output" in str(exc) else str(exc)
            outcome = "ERROR"
        else:
            passed = defined and value is True
            outcome = "PASS" if passed else "FAIL"
            message = "" if passed else ("undefined" if not defined else f"got {value!r}")
        _emit(
            {
                "event": "result",
                "ref": ref,
                "outcome": outcome,
                "duration_s": time.perf_counter() - started,
                "message": message,
            }
        )
    return 0


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
