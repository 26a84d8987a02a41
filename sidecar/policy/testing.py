"""Run Rego unit tests (``test_*`` rules in ``*_test.rego``) with the embedded engine.

The files are ordinary OPA test files, so ``opa test DIR`` runs the same suite on real OPA.
Like ``opa test``: a test passes when its rule is true; false or undefined fails; an engine
error is an error; rules named ``todo_test_*`` are skipped.

Tests run in one worker subprocess for the whole run, which compiles the policy and the tests
once and reports one JSON line per test. rego-cpp can crash the process on some ``with`` forms
(see ``compat.risky_with_forms``); when the worker dies, the test it was running is reported as
an ERROR naming the crash, and a new worker carries on with the rest, so one bad test never
hides the others. A failed ``lhs == rhs`` test shows both values (``_test_explain``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.policy import opa_compiler
from sidecar.policy._rego import new_interpreter
from sidecar.policy._test_direct import plan, policy_rules
from sidecar.policy.compat import risky_with_forms
from sidecar.policy.source import load_policy_dir

__all__ = ["TestCase", "TestOutcome", "TestResult", "discover_tests", "run_tests", "warnings"]

WORKER = (sys.executable, "-m", "sidecar.policy._test_worker")
PLANS_ENV = "AGENT_SIDECAR_TEST_PLANS"  # the file of direct plans (``_test_direct``), by ref

_TEST_RULE = re.compile(r"^((?:todo_)?test_\w+)\s*(?:if\b|\{|:=|=)", re.MULTILINE)


class TestOutcome:
    PASS = "PASS"  # noqa: S105 (a test outcome, not a password)
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIP = "SKIPPED"


@dataclass(frozen=True)
class TestCase:
    package: str
    name: str
    file: str
    line: int

    @property
    def ref(self) -> str:
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True)
class TestResult:
    case: TestCase
    outcome: str
    duration_s: float
    message: str = ""


def discover_tests(policy_dir: str | Path) -> list[TestCase]:
    source = load_policy_dir(policy_dir, include_tests=True)
    cases: dict[str, TestCase] = {}
    for module in source.modules:
        if not module.path.endswith("_test.rego"):
            continue
        code = module.code
        for match in _TEST_RULE.finditer(code):
            case = TestCase(
                package=module.package,
                name=match.group(1),
                file=module.path,
                line=code.count("\n", 0, match.start()) + 1,
            )
            cases.setdefault(case.ref, case)  # incremental definitions are one test
    return list(cases.values())


def warnings(policy_dir: str | Path) -> list[str]:
    """``file:line: why`` for each test-file construct the embedded engine mishandles."""
    source = load_policy_dir(policy_dir, include_tests=True)
    return [
        f"{module.path}:{line}: {why}; rewrite it or check this test with `opa test`"
        for module in source.modules
        if module.path.endswith("_test.rego")
        for line, why in risky_with_forms(module)
    ]


def run_tests(
    policy_dir: str | Path,
    *,
    run: str | None = None,
    on_result: Callable[[TestResult], None] | None = None,
    worker: Sequence[str] = WORKER,
    jobs: int | None = None,
) -> list[TestResult]:
    """Run every (matching) test; raises ``PolicyLoadError`` if the policy cannot load.

    ``worker`` is the command of the worker process (it gets the policy dir as its last
    argument and speaks the JSON-lines protocol of ``_test_worker``). Test files are shared
    out to ``jobs`` workers (default: the CPUs available), each compiling its files once.
    """
    source = load_policy_dir(policy_dir, include_tests=True)
    new_interpreter(source.modules, source.data)  # load errors surface here, not in the worker
    plans = _direct_plans(source.modules, source.data)
    pattern = re.compile(run) if run else None
    cases = [c for c in discover_tests(policy_dir) if pattern is None or pattern.search(c.ref)]
    results: list[TestResult] = []
    lock = threading.Lock()

    def record(result: TestResult) -> None:
        with lock:
            results.append(result)
            if on_result is not None:
                on_result(result)

    by_file: dict[str, list[TestCase]] = {}
    for case in cases:
        if case.name.startswith("todo_"):
            record(TestResult(case, TestOutcome.SKIP, 0.0))
        else:
            by_file.setdefault(case.file, []).append(case)
    worker_plans = {c.ref: plans.get(c.file, {}).get(c.name) for c in cases}
    groups: list[list[TestCase]] = [[] for _ in range(max(1, jobs or _cpus()))]
    for file_cases in sorted(by_file.values(), key=len, reverse=True):
        min(groups, key=len).extend(file_cases)

    def run_group(pending: list[TestCase]) -> None:
        while pending:
            pending = _run_worker(worker, Path(policy_dir), pending, record, worker_plans)

    threads = [threading.Thread(target=run_group, args=(g,)) for g in groups if g]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _event(line: str) -> dict[str, Any] | None:
    """One protocol event, or None for anything else on the worker's stdout."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(event, dict) and event.get("event") in ("start", "result") and "ref" in event
    return event if ok else None


def _direct_plans(modules: Sequence[Any], data: Any) -> dict[str, dict[str, Any]]:
    """``file -> test name -> checks`` for the tests ``_test_direct`` decides without ``with``,
    from OPA's AST (the vetting just computed it: cached); empty without OPA's compiler."""
    try:
        result = opa_compiler.check(modules, data)
    except opa_compiler.OpaUnavailable:
        return {}
    if result.findings:
        return {}
    asts = {m.path: json.loads(a) for m, a in zip(modules, result.asts, strict=True)}
    rules = policy_rules(a for path, a in asts.items() if not path.endswith("_test.rego"))
    return {
        path: {name: [c.to_json() for c in checks] for name, checks in plan(ast, rules).items()}
        for path, ast in asts.items()
        if path.endswith("_test.rego")
    }


def _run_worker(
    worker: Sequence[str],
    policy_dir: Path,
    cases: list[TestCase],
    record: Callable[[TestResult], None],
    plans: dict[str, Any] | None = None,
) -> list[TestCase]:
    """Run ``cases`` in one worker; return those not yet run if the worker died."""
    by_ref = {c.ref: c for c in cases}
    with (
        tempfile.TemporaryFile("w+") as errors,
        tempfile.NamedTemporaryFile("w", suffix=".json") as planned,
    ):
        # the direct plans travel beside the protocol (a worker may ignore them)
        json.dump({c.ref: (plans or {}).get(c.ref) for c in cases}, planned)
        planned.flush()
        proc = subprocess.Popen(
            [*worker, str(policy_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, PLANS_ENV: planned.name},
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(json.dumps([c.file, c.ref]) + "\n" for c in cases))
        proc.stdin.close()
        done: set[str] = set()
        running: str | None = None
        started = time.perf_counter()
        for line in proc.stdout:
            event = _event(line)
            if event is None:
                continue
            if event["event"] == "start":
                running, started = event["ref"], time.perf_counter()
            elif event["ref"] in by_ref:
                case = by_ref[event["ref"]]
                record(TestResult(case, event["outcome"], event["duration_s"], event["message"]))
                done.add(event["ref"])
                running = None
        code = proc.wait()
        errors.seek(0)
        stderr = errors.read()
    if code == 0 and running is None:
        return [c for c in cases if c.ref not in done]
    left = [c for c in cases if c.ref not in done]
    if running is None and len({c.file for c in left}) > 1:
        # It died compiling several test files together: run each file on its own, so that
        # the one the engine cannot compile fails alone.
        by_file: dict[str, list[TestCase]] = {}
        for case in left:
            by_file.setdefault(case.file, []).append(case)
        for file_cases in by_file.values():
            pending = file_cases
            while pending:
                pending = _run_worker(worker, policy_dir, pending, record, plans)
        return []
    if running is None:
        # The worker failed before running anything (e.g. the policy does not load).
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        for case in cases:
            if case.ref not in done:
                record(TestResult(case, TestOutcome.ERROR, 0.0, f"test worker failed: {detail}"))
        return []
    crash = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    record(
        TestResult(
            by_ref[running],
            TestOutcome.ERROR,
            time.perf_counter() - started,
            f"the embedded engine (rego-cpp) crashed evaluating this test ({crash}); "
            "this is an engine bug, see docs/policy-authoring.md, and check it with `opa test`",
        )
    )
    done.add(running)
    return [c for c in cases if c.ref not in done]
