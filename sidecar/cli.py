"""The ``agent-sidecar`` command.

  agent-sidecar serve --config FILE
  agent-sidecar check --config FILE --input FILE.json
  agent-sidecar policy test [DIR] [--verbose] [--run REGEX]
  agent-sidecar dev workload-api --trust-domain TD --socket PATH --spiffe-id ID [...]

Exit status: 0 success; 1 a policy test failed; 2 bad usage, configuration or policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__
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
    serve.set_defaults(func=_serve)

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
    test.set_defaults(func=_policy_test)

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

    configure_logging(args.log_level)
    settings = load_settings(args.config)

    async def serve() -> None:
        # grpc.aio binds to the running loop: build inside it.
        sidecar = Sidecar.build(settings)
        try:
            reload = sidecar.reloader.request if sidecar.reloader else None
            await serve_until_signalled(sidecar.server, on_hup=reload)
        finally:
            sidecar.close()

    asyncio.run(serve())
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


def _policy_test(args: argparse.Namespace) -> int:
    from sidecar.policy.testing import TestOutcome, TestResult, run_tests, warnings

    for warning in warnings(args.dir):
        print(f"warning: {warning}", file=sys.stderr)

    def show(result: TestResult) -> None:
        ms = f"{result.duration_s * 1000:.1f}ms"
        if result.outcome == TestOutcome.PASS and not args.verbose:
            return
        if result.outcome == TestOutcome.SKIP and not args.verbose:
            return
        print(f"{result.outcome}: {result.case.ref} ({ms})")
        if result.outcome in (TestOutcome.FAIL, TestOutcome.ERROR):
            print(f"  {result.case.file}:{result.case.line}: {result.message}")

    results = run_tests(args.dir, run=args.run, on_result=show)
    passed = sum(r.outcome == TestOutcome.PASS for r in results)
    failed = sum(r.outcome in (TestOutcome.FAIL, TestOutcome.ERROR) for r in results)
    skipped = sum(r.outcome == TestOutcome.SKIP for r in results)
    if not results:
        print("no tests found", file=sys.stderr)
        return 1
    print("-" * 80)
    summary = f"{passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
