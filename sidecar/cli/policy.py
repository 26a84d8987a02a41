"""``agent-sidecar policy``: evaluate, check, replay and test Rego."""

from __future__ import annotations

import argparse
import json
import sys

from sidecar.errors import SidecarError

__all__ = ["policy_build", "policy_check", "policy_eval", "policy_replay", "policy_test"]


def policy_eval(args: argparse.Namespace) -> int:
    from sidecar.policy import Decision, DecisionError, EmbeddedEngine, parse_decision

    try:
        input_doc = json.loads(args.input.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{args.input}: cannot read a JSON input document: {exc}") from exc
    engine = EmbeddedEngine.from_dir(args.policy, args.query, workers=1)
    try:
        result = engine.evaluate_sync(input_doc)
        try:
            decision = parse_decision(result.value, defined=result.defined)
        except DecisionError as exc:
            decision = Decision.fail_closed(exc)
        out = {
            "query": args.query,
            "revision": result.revision,
            "defined": result.defined,
            "result": result.value,
            "decision": decision.to_dict(),
        }
    except DecisionError as exc:
        out = {
            "query": args.query,
            "error": str(exc),
            "decision": Decision.fail_closed(exc).to_dict(),
        }
    finally:
        engine.close()
    print(json.dumps(out, indent=2, sort_keys=True))
    if args.expect and out["decision"]["effect"] != args.expect:
        effect = out["decision"]["effect"]
        print(f"agent-sidecar: expected {args.expect}, decided {effect}", file=sys.stderr)
        return 1
    return 0


def policy_build(args: argparse.Namespace) -> int:
    """Compile the directory as the sidecar would (refusing what it would refuse), then write
    the bundle; the signing key is read, never printed."""
    from sidecar.policy import EmbeddedEngine
    from sidecar.policy.bundle.build import build_bundle

    key = None
    if args.signing_key is not None:
        try:
            key = args.signing_key.read_bytes()
        except OSError as exc:
            raise SidecarError(f"{args.signing_key}: cannot read the signing key: {exc}") from exc
    EmbeddedEngine.from_dir(args.dir, args.query, workers=1).close()
    blob = build_bundle(
        args.dir,
        revision=args.revision,
        roots=tuple(args.root),
        signing_key=key,
        algorithm=args.signing_alg,
        key_id=args.key_id,
        scope=args.scope,
    )
    args.output.write_bytes(blob)
    signed = f", signed ({args.signing_alg})" if key is not None else ""
    print(f"wrote {args.output} ({len(blob)} bytes{signed})")
    return 0


def policy_check(args: argparse.Namespace) -> int:
    from sidecar.policy.check import check_policy

    findings = check_policy(args.dir, args.query)
    for finding in findings:
        print(finding)
    print(f"{len(findings)} problem{'s' if len(findings) != 1 else ''}")
    return 1 if findings else 0


def policy_replay(args: argparse.Namespace) -> int:
    from sidecar.policy.replay import replay, to_rego_tests

    if not args.audit.is_file():
        raise SidecarError(f"{args.audit}: audit log not found")
    report = replay(args.audit, args.policy, args.query)
    for change in report.changes:
        reasons = "; ".join(change.new_reasons) or "-"
        print(
            f"{change.decision_id} {change.tool}: {change.old_effect} -> "
            f"{change.new_effect} ({reasons})"
        )
    print(
        f"{report.records} records, {report.replayed} replayed (recorded with input), "
        f"{len(report.changes)} changed under revision {report.revision}"
    )
    if args.to_tests is not None and report.changes:
        args.to_tests.write_text(to_rego_tests(report.changes, args.query))
        print(f"wrote {len(report.changes)} tests to {args.to_tests}")
    flipped = [c for c in report.changes if c.flips_allow]
    return 1 if args.fail_on_change and flipped else 0


def policy_test(args: argparse.Namespace) -> int:
    from sidecar.policy.watch import watch

    if args.coverage:
        print(
            "agent-sidecar: coverage is not available with the embedded engine: rego-cpp "
            f"exposes no coverage data. Run `opa test --coverage {args.dir}` for it.",
            file=sys.stderr,
        )
        return 2
    if args.watch:
        return watch(args.dir, lambda: _run_policy_tests(args), sys.stdout)
    return _run_policy_tests(args)


def _run_policy_tests(args: argparse.Namespace) -> int:
    from sidecar.policy.errors import PolicyLoadError
    from sidecar.policy.testing import TestOutcome, TestResult, run_tests, warnings

    broken: list[BrokenPipeError] = []  # the reader went away (`| head`): in a worker thread

    def show(result: TestResult) -> None:
        ms = f"{result.duration_s * 1000:.1f}ms"
        if broken:
            return
        if result.outcome == TestOutcome.PASS and not args.verbose:
            return
        if result.outcome == TestOutcome.SKIP and not args.verbose:
            return
        try:
            print(f"{result.outcome}: {result.case.ref} ({ms})", flush=True)
            if result.outcome in (TestOutcome.FAIL, TestOutcome.ERROR):
                print(f"  {result.case.file}:{result.case.line}: {result.message}", flush=True)
        except BrokenPipeError as exc:
            broken.append(exc)

    try:
        for warning in warnings(args.dir):
            print(f"warning: {warning}", file=sys.stderr)
        results = run_tests(args.dir, run=args.run, on_result=show)
    except PolicyLoadError as exc:
        print(f"agent-sidecar: {exc}", file=sys.stderr, flush=True)
        return 2
    if broken:
        raise broken[0]  # the CLI ends quietly (sidecar.cli.main)
    passed = sum(r.outcome == TestOutcome.PASS for r in results)
    failed = sum(r.outcome in (TestOutcome.FAIL, TestOutcome.ERROR) for r in results)
    skipped = sum(r.outcome == TestOutcome.SKIP for r in results)
    if not results:
        print("no tests found", file=sys.stderr)
        return 1
    print("-" * 80)
    summary = f"{passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""), flush=True)
    return 1 if failed else 0
