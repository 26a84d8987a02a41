"""Worker process of the Rego test runner: test refs on stdin, one JSON event a line out.

Kept separate so that a crash inside rego-cpp ends this process, not the runner.
"""

from __future__ import annotations

import json
import sys
import time

from sidecar.policy._rego import EvalError, new_interpreter, query_once
from sidecar.policy.source import load_policy_dir


def main(policy_dir: str) -> int:
    source = load_policy_dir(policy_dir, include_tests=True)
    interp = new_interpreter(source.modules, source.data)
    for ref in (line.strip() for line in sys.stdin):
        if not ref:
            continue
        _emit({"event": "start", "ref": ref})
        started = time.perf_counter()
        try:
            defined, value = query_once(interp, ref)
        except EvalError as exc:
            outcome, message = "ERROR", str(exc)
        else:
            passed = defined and value is True
            outcome = "PASS" if passed else "FAIL"
            message = "" if passed else ("undefined" if not defined else f"got {value!r}")
        duration = time.perf_counter() - started
        _emit(
            {
                "event": "result",
                "ref": ref,
                "outcome": outcome,
                "duration_s": duration,
                "message": message,
            }
        )
    return 0


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
