"""The ``agent-sidecar`` command.

  agent-sidecar serve --config FILE
  agent-sidecar check --config FILE --input FILE.json
  agent-sidecar policy test [DIR] [--verbose] [--run REGEX] [--watch]
  agent-sidecar policy eval --input FILE [--policy DIR] [--query Q]
  agent-sidecar policy check [DIR] [--query Q]
  agent-sidecar policy replay --audit FILE --policy DIR [--fail-on-change] [--to-tests FILE]
  agent-sidecar dev workload-api --trust-domain TD --socket PATH --spiffe-id ID [...]
  agent-sidecar audit verify FILE... [--checkpoints F] [--bundle F [--signer ID] | --key F]
                             [--require-sealed] [--max-unsealed-records N] [--max-unsealed-age S]
  agent-sidecar audit show FILE... [--subject ID] [--tool NAME] [--effect E] [--since T]
  agent-sidecar approvals [--admin ADDR | --config FILE] [--as NAME | mTLS options]
                          list [--state S] | show ID | approve ID --reason TEXT
                          | deny ID --reason TEXT | watch

Exit status: 0 success; 1 a policy test failed, `check` found problems, or `replay
--fail-on-change` found a flipped decision; 2 bad usage, configuration or policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__
from sidecar.config import DEFAULT_AGENT_SOCKET
from sidecar.errors import SidecarError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SidecarError as exc:
        print(f"agent-sidecar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-sidecar",
        description="OPA-backed authorization sidecar for AI agents: attest, decide, relay, audit.",
    )
    parser.add_argument("--version", action="version", version=f"agent-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the agent API until SIGTERM")
    serve.add_argument("--config", required=True, type=Path, help="YAML config file")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (e.g. policy.engine=opa); repeatable",
    )
    serve.set_defaults(func=_serve)

    health = sub.add_parser("health", help="exit 0 if the sidecar's gRPC health is SERVING")
    health.add_argument(
        "--addr",
        default=DEFAULT_AGENT_SOCKET,
        help=f"HOST:PORT or unix:PATH (default: {DEFAULT_AGENT_SOCKET})",
    )
    health.add_argument("--timeout", type=float, default=2.0)
    health.set_defaults(func=_health)

    webhook = sub.add_parser("webhook", help="the Kubernetes mutating admission webhook")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True)
    ws = webhook_sub.add_parser("serve", help="serve POST /mutate over HTTPS")
    ws.add_argument("--config", required=True, type=Path, help="webhook config (YAML)")
    ws.add_argument("--tls-cert", required=True, type=Path)
    ws.add_argument("--tls-key", required=True, type=Path)
    ws.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT")
    ws.set_defaults(func=_webhook_serve)

    check = sub.add_parser("check", help="evaluate one policy input and print the decision")
    check.add_argument("--config", required=True, type=Path, help="YAML config file")
    check.add_argument("--input", required=True, type=Path, help="policy input v1 (JSON)")
    check.set_defaults(func=_check)

    policy = sub.add_parser("policy", help="work with Rego policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    test = policy_sub.add_parser("test", help="run the Rego unit tests (*_test.rego)")
    test.add_argument("dir", nargs="?", default="rego", type=Path, help="policy dir (rego)")
    test.add_argument("--verbose", "-v", action="store_true", help="print passing tests too")
    test.add_argument("--run", "-r", metavar="REGEX", help="only tests whose ref matches")
    test.add_argument("--coverage", action="store_true", help="(not available: says why)")
    test.add_argument(
        "--watch", "-w", action="store_true", help="run again on every change (Ctrl-C stops)"
    )
    test.set_defaults(func=_policy_test)

    query_default = "data.agentsidecar.authz.decision"
    ev = policy_sub.add_parser("eval", help="evaluate one input; print the decision")
    ev.add_argument("--input", required=True, type=Path, help="policy input (JSON)")
    ev.add_argument("--policy", default=Path("rego"), type=Path, help="policy dir (rego)")
    ev.add_argument("--query", default=query_default)
    ev.set_defaults(func=_policy_eval)

    chk = policy_sub.add_parser("check", help="compile, built-ins, data schema, style lint")
    chk.add_argument("dir", nargs="?", default=Path("rego"), type=Path)
    chk.add_argument("--query", default=query_default)
    chk.set_defaults(func=_policy_check)

    rp = policy_sub.add_parser("replay", help="re-decide an audit log's calls with a candidate")
    rp.add_argument("--audit", required=True, type=Path, help="audit log (JSON lines)")
    rp.add_argument("--policy", required=True, type=Path, help="candidate policy dir")
    rp.add_argument("--query", default=query_default)
    rp.add_argument(
        "--fail-on-change",
        action="store_true",
        help="exit 1 if an allowed call would be refused, or a refused one allowed",
    )
    rp.add_argument(
        "--to-tests",
        type=Path,
        metavar="FILE",
        help="write the changed cases as a *_test.rego file",
    )
    rp.set_defaults(func=_policy_replay)

    audit = sub.add_parser("audit", help="verify and query audit logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    av = audit_sub.add_parser("verify", help="check hashes, sequence and signed checkpoints")
    av.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="audit log(s), oldest first (rotations of one path are found)",
    )
    av.add_argument(
        "--checkpoints", type=Path, help="the checkpoint file (default FILE.checkpoints)"
    )
    av.add_argument("--bundle", type=Path, help="trust bundle (PEM) for SVID-signed checkpoints")
    av.add_argument("--key", type=Path, help="public key (PEM) for key-file-signed checkpoints")
    av.add_argument(
        "--require-sealed",
        action="store_true",
        help="fail if records after the last checkpoint are not signed yet",
    )
    av.add_argument(
        "--signer",
        action="append",
        default=[],
        metavar="SPIFFE_ID",
        help="with --bundle: accept checkpoints signed only by this SPIFFE ID (repeatable; "
        "default: any SVID of the bundle's trust domain, named in the checkpoint)",
    )
    av.add_argument(
        "--max-unsealed-records",
        type=int,
        default=100,
        metavar="N",
        help="fail if more than N records follow the last checkpoint (default: 100)",
    )
    av.add_argument(
        "--max-unsealed-age",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="fail if records were written more than SECONDS after the last checkpoint "
        "(default: 600)",
    )
    av.set_defaults(func=_audit_verify)
    sh = audit_sub.add_parser("show", help="who called what, with what outcome")
    sh.add_argument("files", nargs="+", type=Path)
    sh.add_argument("--subject", help="a SPIFFE ID")
    sh.add_argument("--tool", help="a tool (or model) name")
    sh.add_argument("--effect", choices=["allow", "deny", "step_up"])
    sh.add_argument("--since", help="30m, 2h, 1d, or an ISO 8601 time")
    sh.set_defaults(func=_audit_show)

    ap = sub.add_parser(
        "approvals",
        help="list, approve and deny step-up approvals (the admin API)",
        description="Talks to the sidecar's approvals admin API: a unix socket (name yourself "
        "with --as) or HOST:PORT with mTLS (your X.509-SVID from --workload-api, or --cert, "
        "--key and --bundle files). The address: --admin, or approvals.listen in --config.",
    )
    ap.add_argument("--admin", help="unix:///PATH or HOST:PORT of the approvals API")
    ap.add_argument("--config", type=Path, help="the sidecar's config (for approvals.listen)")
    ap.add_argument("--as", dest="approver", default="", help="your name on a unix socket")
    ap.add_argument("--workload-api", default="", help="Workload API socket for your SVID")
    ap.add_argument("--cert", type=Path, help="your X.509-SVID chain (PEM)")
    ap.add_argument("--key", type=Path, help="its private key (PEM)")
    ap.add_argument("--bundle", type=Path, help="trust bundle to verify the sidecar (PEM)")
    ap.add_argument("--server-name", help="a DNS SAN of the sidecar's SVID")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap_sub = ap.add_subparsers(dest="approvals_command", required=True)
    al = ap_sub.add_parser("list", help="approvals, newest first")
    al.add_argument("--state", action="append", default=[], help="only these states")
    al.add_argument("--limit", type=int, default=100)
    al.set_defaults(func=_approvals)
    ash = ap_sub.add_parser("show", help="one approval, whole")
    ash.add_argument("id")
    ash.set_defaults(func=_approvals)
    for name, verb in (("approve", "grant"), ("deny", "refuse")):
        ad = ap_sub.add_parser(name, help=f"{verb} a pending approval")
        ad.add_argument("id")
        ad.add_argument(
            "--reason", required=True, help="recorded in the audit log and policy input"
        )
        ad.set_defaults(func=_approvals)
    aw = ap_sub.add_parser("watch", help="print approvals as they are created and change")
    aw.set_defaults(func=_approvals)

    dev = sub.add_parser("dev", help="DEVELOPMENT ONLY helpers")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    wl = dev_sub.add_parser(
        "workload-api",
        help="DEVELOPMENT ONLY: a SPIFFE Workload API that issues SVIDs from an in-memory CA",
        description="DEVELOPMENT ONLY. Serves the SPIFFE Workload API on unix sockets, one "
        "identity per socket, signed by an in-memory CA. It attests nothing: never use it "
        "outside development and tests. SIGHUP rotates every SVID and the JWT key.",
    )
    wl.add_argument("--trust-domain", required=True)
    wl.add_argument(
        "--socket",
        action="append",
        default=[],
        type=Path,
        required=True,
        help="unix socket path (repeat, paired in order with --spiffe-id)",
    )
    wl.add_argument(
        "--spiffe-id",
        action="append",
        default=[],
        required=True,
        help="SPIFFE ID served on the matching --socket",
    )
    wl.add_argument(
        "--dns-name",
        action="append",
        default=[],
        help="DNS SAN added to every X.509-SVID (for mTLS server names)",
    )
    wl.add_argument("--x509-ttl", type=float, default=3600, help="X.509-SVID TTL, seconds")
    wl.add_argument("--jwt-ttl", type=float, default=300, help="JWT-SVID TTL, seconds")
    wl.add_argument("--rotate-every", type=float, help="rotate everything every N seconds")
    wl.add_argument("--bundle-out", type=Path, help="write the X.509 trust bundle (PEM) here")
    wl.set_defaults(func=_dev_workload_api)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from sidecar.app import Sidecar
    from sidecar.config import load_settings
    from sidecar.logs import configure_logging
    from sidecar.server import serve_until_signalled
    from sidecar.workers import (
        WORKER_ENV,
        Supervisor,
        WorkerRole,
        available_cpus,
        die_with_supervisor,
        signal_ready,
    )

    configure_logging(args.log_level)
    settings = load_settings(args.config, overrides=args.set)
    count = settings.worker_count(available_cpus())
    if count > 1 and WORKER_ENV not in os.environ:  # the supervisor: runs the workers
        command = [sys.executable, "-m", "sidecar.cli", *sys.argv[1:]]
        return Supervisor(command, count, settings.state.dir, settings.server.grace_s).run()
    role = WorkerRole.from_env()
    die_with_supervisor()

    async def serve() -> None:
        # grpc.aio binds to the running loop: build inside it.
        sidecar = Sidecar.build(settings, role)
        try:
            reload = sidecar.reloader.request if sidecar.reloader else None
            await serve_until_signalled(sidecar, on_hup=reload, on_started=signal_ready)
        finally:
            sidecar.close()  # idempotent: after a clean stop, nothing is left to close

    asyncio.run(serve())
    return 0


def _approvals(args: argparse.Namespace) -> int:
    import getpass

    from google.protobuf import json_format

    from sidecar.approvals.client import ApprovalsClient, svid_credentials

    address = args.admin
    if not address and args.config:
        from sidecar.config import load_settings

        address = load_settings(args.config).approvals_listen
    if not address:
        raise SidecarError("give --admin ADDRESS or --config FILE (approvals.listen)")
    tls = None
    if not address.startswith("unix:"):
        tls = svid_credentials(
            cert=args.cert, key=args.key, bundle=args.bundle, workload_api=args.workload_api
        )
    approver = args.approver or (getpass.getuser() if tls is None else "")

    def show(approval: object) -> str:
        return json_format.MessageToJson(approval, preserving_proto_field_name=True, indent=2)

    with ApprovalsClient(
        address, approver=approver, tls=tls, server_name=args.server_name
    ) as client:
        command = args.approvals_command
        try:
            if command == "list":
                approvals = client.list(args.state, args.limit)
                if args.json:
                    print(json.dumps([json.loads(show(a)) for a in approvals], indent=2))
                for a in [] if args.json else approvals:
                    reasons = "; ".join(a.reasons)
                    print(f"{a.id}  {a.state:<8} {a.subject}  {a.action_name}  {reasons}")
            elif command == "show":
                print(show(client.get(args.id)))
            elif command in ("approve", "deny"):
                decide = client.approve if command == "approve" else client.deny
                approval = decide(args.id, reason=args.reason)
                if args.json:
                    print(show(approval))
                else:
                    print(f"{approval.id} {approval.state} by {approval.decided_by}")
            else:
                for event in client.watch():
                    a = event.approval
                    print(f"{event.type:<8} {a.id}  {a.subject}  {a.action_name}", flush=True)
        except SidecarError as exc:
            print(f"agent-sidecar: {exc}", file=sys.stderr)
            return 1
    return 0


def _audit_files(paths: list[Path]) -> list[Path]:
    from sidecar.audit import rotated_files

    files: list[Path] = []
    for path in paths:
        found = rotated_files(path) if len(paths) == 1 else [path]
        if not found:
            raise SidecarError(f"{path}: audit log not found")
        files += found
    return files


def _audit_verify(args: argparse.Namespace) -> int:
    """Verify the log: with one path, every worker's segment beside it too (each its own
    chain, checkpoints and verdict); exit 0 only if all are intact."""
    from sidecar.workers import segments

    for option, path in (
        ("--bundle", args.bundle),
        ("--key", args.key),
        ("--checkpoints", args.checkpoints),
    ):
        if path is not None and not path.is_file():
            raise SidecarError(f"{option} {path}: file not found")
    if len(args.files) == 1 and args.checkpoints is None:
        groups = [_audit_files([segment]) for segment in segments(args.files[0])]
    else:
        groups = [_audit_files(args.files)]
    intact = True
    for files in groups:
        prefix = f"{files[-1].name}: " if len(groups) > 1 else ""
        intact = _verify_segment(files, args, prefix) and intact
    return 0 if intact else 1


def _verify_segment(files: list[Path], args: argparse.Namespace, prefix: str) -> bool:
    from sidecar.audit import verify

    checkpoints = args.checkpoints or files[-1].with_name(files[-1].name + ".checkpoints")
    report = verify(
        files,
        checkpoints_file=checkpoints,
        key_file=args.key,
        bundle_file=args.bundle,
        require_sealed=args.require_sealed,
        signers=args.signer,
        max_unsealed_records=args.max_unsealed_records,
        max_unsealed_age_s=args.max_unsealed_age,
    )
    for problem in report.problems:
        print(f"{prefix}BAD: {problem}")
    for note in report.notes:
        print(f"{prefix}note: {note}")
    verdict = "intact" if report.intact else "NOT intact"
    print(
        f"{prefix}{report.records} records, {report.checkpoints} checkpoints, signed through "
        f"seq {report.sealed_through}: {verdict}"
    )
    return report.intact


def _audit_show(args: argparse.Namespace) -> int:
    from sidecar.audit.show import parse_since, rows, table

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise SidecarError(f"--since {args.since!r}: {exc}") from exc
    from sidecar.workers import segments

    if len(args.files) == 1:  # and the other workers' segments, merged in time order
        files = [f for segment in segments(args.files[0]) for f in _audit_files([segment])]
    else:
        files = _audit_files(args.files)
    found = sorted(
        rows(
            files,
            subject=args.subject,
            tool=args.tool,
            effect=args.effect,
            since_ns=since,
        ),
        key=lambda row: row[0],
    )
    print(table(found))
    print(f"{len(found)} calls")
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(args.addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"not serving: {exc.code().name}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _webhook_serve(args: argparse.Namespace) -> int:
    import ssl

    from sidecar.logs import configure_logging
    from sidecar.webhook.server import WebhookServer

    configure_logging("info")
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SidecarError(f"--listen {args.listen!r} is not HOST:PORT")
    try:
        server = WebhookServer(
            args.config,
            args.tls_cert,
            args.tls_key,
            host=host or "0.0.0.0",  # noqa: S104 - the API server must reach the webhook
            port=int(port),
        )
    except (OSError, ssl.SSLError) as exc:
        raise SidecarError(f"cannot start the webhook: {exc}") from exc
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _check(args: argparse.Namespace) -> int:
    from sidecar.app import build_engine
    from sidecar.config import load_settings
    from sidecar.policy import Decision, DecisionError, parse_decision

    settings = load_settings(args.config)
    try:
        input_doc = json.loads(args.input.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{args.input}: cannot read a JSON input document: {exc}") from exc
    engine = build_engine(settings)
    try:
        result = engine.evaluate_sync(input_doc)  # type: ignore[attr-defined]
        decision = parse_decision(result.value, defined=result.defined)
    except DecisionError as exc:
        decision = Decision.fail_closed(exc)
    finally:
        engine.close()
    out = decision.to_dict() | {"policy_revision": engine.revision}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _dev_workload_api(args: argparse.Namespace) -> int:
    from sidecar.dev import run_dev_workload_api
    from sidecar.logs import configure_logging

    configure_logging("warning")
    if len(args.socket) != len(args.spiffe_id):
        raise SidecarError("give one --spiffe-id for each --socket")
    return run_dev_workload_api(
        trust_domain=args.trust_domain,
        identities=[(str(s), i) for s, i in zip(args.socket, args.spiffe_id, strict=True)],
        x509_ttl_s=args.x509_ttl,
        jwt_ttl_s=args.jwt_ttl,
        rotate_every_s=args.rotate_every,
        bundle_out=args.bundle_out,
        dns_names=args.dns_name,
    )


def _policy_eval(args: argparse.Namespace) -> int:
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
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    from sidecar.policy.check import check_policy

    findings = check_policy(args.dir, args.query)
    for finding in findings:
        print(finding)
    print(f"{len(findings)} problem{'s' if len(findings) != 1 else ''}")
    return 1 if findings else 0


def _policy_replay(args: argparse.Namespace) -> int:
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


def _policy_test(args: argparse.Namespace) -> int:
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

    def show(result: TestResult) -> None:
        ms = f"{result.duration_s * 1000:.1f}ms"
        if result.outcome == TestOutcome.PASS and not args.verbose:
            return
        if result.outcome == TestOutcome.SKIP and not args.verbose:
            return
        print(f"{result.outcome}: {result.case.ref} ({ms})")
        if result.outcome in (TestOutcome.FAIL, TestOutcome.ERROR):
            print(f"  {result.case.file}:{result.case.line}: {result.message}")

    try:
        for warning in warnings(args.dir):
            print(f"warning: {warning}", file=sys.stderr)
        results = run_tests(args.dir, run=args.run, on_result=show)
    except PolicyLoadError as exc:
        print(f"agent-sidecar: {exc}", file=sys.stderr, flush=True)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
