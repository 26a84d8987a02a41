"""When the engine process dies mid-test, that test is an ERROR and the rest still run.

The worker here speaks the runner's JSON-lines protocol and aborts (SIGABRT, as rego-cpp does
on its internal errors) when it reaches one chosen test; a real rego-cpp crash cannot be
triggered on demand, and what is under test is the runner's recovery.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from sidecar.policy.testing import TestOutcome, run_tests

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    for line in sys.stdin:
        file, ref = json.loads(line)
        print(json.dumps({"event": "start", "ref": ref}), flush=True)
        if ref.endswith("test_high_risk_above_threshold_steps_up"):
            os.abort()
        print(json.dumps({"event": "result", "ref": ref, "outcome": "PASS",
                          "duration_s": 0.0, "message": ""}), flush=True)
    """
)


def test_a_crashed_test_is_an_error_and_the_others_complete(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    results = run_tests(ROOT / "rego", worker=(sys.executable, str(script)))
    by_name = {r.case.name: r for r in results}
    crashed = by_name["test_high_risk_above_threshold_steps_up"]
    assert crashed.outcome == TestOutcome.ERROR
    assert "crashed" in crashed.message and "SIGABRT" in crashed.message
    others = [r for r in results if r is not crashed]
    assert others and all(r.outcome == TestOutcome.PASS for r in others)
    # Every test ran exactly once, across the restarted workers.
    assert len(results) == len({r.case.ref for r in results})
