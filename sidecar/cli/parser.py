"""The command line: every command, option and default, in one place (``--help`` shows them)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from sidecar import __version__
from sidecar._lazy import component
from sidecar.cli import run
from sidecar.config import DEFAULT_AGENT_SOCKET

__all__ = ["build_parser"]

QUERY = "data.agentsidecar.authz.decision"


def command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``sidecar.cli.MODULE.NAME``, imported when that command runs: ``serve`` then holds no
    other command's module (docs/performance.md). A module that cannot be imported is a clear
    error (exit 2), not a traceback."""

    def run_command(args: argparse.Namespace) -> int:
        with component(f"agent-sidecar {args.command}", "the command"):
            target = getattr(importlib.import_module(f"sidecar.cli.{module}"), name)
        return int(target(args))

    run_command.__qualname__ = run_command.__name__ = f"{module}.{name}"
    return run_command


class _Help(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a real default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or default in (None, False, [], "", argparse.SUPPRESS)
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _sub(
    parent: argparse._SubParsersAction, name: str, **kwargs: object
) -> argparse.ArgumentParser:
    return parent.add_parser(name, formatter_class=_Help, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-sidecar",
        description="OPA-backed authorization sidecar for AI agents: attest, decide, relay, audit.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"agent-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serving(sub)
    _policy(sub)
    _audit(sub)
    _approvals(sub)
    _mcp(sub)
    _a2a(sub)
    _dev(sub)
    return parser


def _server_options(parser: argparse.ArgumentParser, example: str) -> None:
    """What every long-running command takes: the log level and config overrides."""
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="log lines at this level and above (JSON on stderr)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key (e.g. {example}), the value as YAML; a name with dots "
        'is quoted: tools."tickets.get".path=/v2/{id} (or escaped: tools.tickets\\.get.path=...); '
        "repeatable",
    )


def _serving(sub: argparse._SubParsersAction) -> None:
    serve = _sub(sub, "serve", help="serve the agent API until SIGTERM")
    serve.add_argument("--config", required=True, type=Path, help="YAML config file")
    _server_options(serve, "policy.engine=opa")
    serve.set_defaults(func=run.serve)

    con = _sub(sub, "console", help="serve the approvals web console over the state store")
    con.add_argument("--config", required=True, type=Path, help="YAML config file (console:)")
    con.add_argument("--listen", default="", help="HOST:PORT to serve on (default: console.listen)")
    _server_options(con, "console.auth=mtls")
    con.set_defaults(func=command("console", "console"))

    health = _sub(sub, "health", help="exit 0 if the sidecar's gRPC health is SERVING")
    health.add_argument(
        "--addr", default=DEFAULT_AGENT_SOCKET, help="the agent API: unix:///PATH or HOST:PORT"
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    health.set_defaults(func=run.health)

    check = _sub(sub, "check", help="evaluate one policy input and print the decision")
    check.add_argument("--config", required=True, type=Path, help="YAML config file")
    check.add_argument("--input", required=True, type=Path, help="policy input v1 (JSON)")
    check.set_defaults(func=run.check)

    ex = _sub(
        sub,
        "explain",
        help="what may this agent use: every tool, model and MCP tool decided, as a table",
        description="Decides every configured tool and model and every pinned MCP tool for "
        "one agent with the policy of --config, locally (no running sidecar): allow, deny or "
        "step_up and the reasons, each as a first call (no arguments; no task unless --task).",
    )
    ex.add_argument("--config", required=True, type=Path, help="YAML config file")
    ex.add_argument("--as", dest="as_id", required=True, metavar="SPIFFE_ID", help="the agent")
    ex.add_argument(
        "--user",
        metavar="TOKEN",
        help="a user token the agent acts for, verified as serve does (- reads it from stdin)",
    )
    ex.add_argument(
        "--attestation",
        choices=["pod-svid", "jwt-svid", "x509-svid", "static", "authzen"],
        help="input.subject.attestation (default: what identity.mode gives a call; authzen: "
        "as the AuthZEN search APIs ask)",
    )
    ex.add_argument(
        "--task",
        metavar="INTENT",
        help="decide each as under a fresh task with this intent (default: no task)",
    )
    ex.add_argument("--json", action="store_true", help="print JSON")
    ex.set_defaults(func=command("explain", "explain"))

    webhook = _sub(sub, "webhook", help="the Kubernetes mutating admission webhook")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True, metavar="COMMAND")
    ws = _sub(webhook_sub, "serve", help="serve POST /mutate/pod and /mutate/namespace (HTTPS)")
    ws.add_argument("--config", required=True, type=Path, help="webhook config (YAML)")
    ws.add_argument("--tls-cert", required=True, type=Path, help="serving certificate chain (PEM)")
    ws.add_argument("--tls-key", required=True, type=Path, help="its private key (PEM)")
    ws.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT to serve on")
    ws.set_defaults(func=run.webhook_serve)

    from sidecar.egress_lock.cli import add_parser as egress_lock_parser

    egress_lock_parser(sub, _sub)  # install, verify, node-agent (sidecar/egress_lock/cli.py)


def _policy(sub: argparse._SubParsersAction) -> None:
    pol = _sub(sub, "policy", help="work with Rego policy")
    policy_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    test = _sub(policy_sub, "test", help="run the Rego unit tests (*_test.rego)")
    test.add_argument(
        "dir", nargs="?", default=Path("rego"), type=Path, help="policy directory to test"
    )
    test.add_argument("--verbose", "-v", action="store_true", help="print passing tests too")
    test.add_argument("--run", "-r", metavar="REGEX", help="only tests whose ref matches")
    # Not offered (rego-cpp exposes no coverage data), so not in --help; typed anyway, it
    # says why and where to get coverage (`opa test --coverage`).
    test.add_argument("--coverage", action="store_true", help=argparse.SUPPRESS)
    test.add_argument(
        "--watch", "-w", action="store_true", help="run again on every change (Ctrl-C stops)"
    )
    test.set_defaults(func=command("policy", "policy_test"))

    ev = _sub(policy_sub, "eval", help="evaluate one input; print the decision")
    ev.add_argument("--input", required=True, type=Path, help="policy input (JSON)")
    ev.add_argument("--policy", default=Path("rego"), type=Path, help="policy directory")
    ev.add_argument("--query", default=QUERY, help="the decision's query")
    ev.add_argument(
        "--expect",
        choices=["allow", "deny", "step_up"],
        help="exit 1 unless the decision's effect is this (a smoke test, e.g. in an image build)",
    )
    ev.set_defaults(func=command("policy", "policy_eval"))

    chk = _sub(policy_sub, "check", help="compile, built-ins, data schema, style lint")
    chk.add_argument(
        "dir", nargs="?", default=Path("rego"), type=Path, help="policy directory to check"
    )
    chk.add_argument("--query", default=QUERY, help="the decision's query (must be defined)")
    chk.set_defaults(func=command("policy", "policy_check"))

    rp = _sub(policy_sub, "replay", help="re-decide an audit log's calls with a candidate")
    rp.add_argument("--audit", required=True, type=Path, help="audit log (JSON lines)")
    rp.add_argument("--policy", required=True, type=Path, help="candidate policy directory")
    rp.add_argument("--query", default=QUERY, help="the decision's query")
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
    rp.set_defaults(func=command("policy", "policy_replay"))

    bd = _sub(policy_sub, "build", help="write an OPA bundle (.tar.gz) of a policy directory")
    bd.add_argument("dir", type=Path, help="policy directory")
    bd.add_argument("-o", "--output", required=True, type=Path, help="bundle file to write")
    bd.add_argument("--revision", default="", help="manifest revision (default: content hash)")
    bd.add_argument("--root", action="append", default=[], help="manifest root (repeatable)")
    bd.add_argument("--signing-key", type=Path, help="PEM private key: sign the bundle")
    bd.add_argument("--signing-alg", default="RS256", help="RS256, PS256, ES256, ...")
    bd.add_argument("--key-id", default="", help="the key id verifiers know the key by")
    bd.add_argument("--scope", default="", help="signature scope")
    bd.add_argument("--query", default=QUERY, help="the decision's query (compiled first)")
    bd.set_defaults(func=command("policy", "policy_build"))


def _audit(sub: argparse._SubParsersAction) -> None:
    aud = _sub(sub, "audit", help="verify and query audit logs")
    audit_sub = aud.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    av = _sub(audit_sub, "verify", help="check hashes, sequence and signed checkpoints")
    av.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="audit log(s), oldest first (rotations of one path are found)",
    )
    av.add_argument(
        "--checkpoints", type=Path, help="the checkpoint file (default: FILE.checkpoints)"
    )
    av.add_argument("--bundle", type=Path, help="trust bundle (PEM) for SVID-signed checkpoints")
    av.add_argument("--key", type=Path, help="public key (PEM) for key-file-signed checkpoints")
    av.add_argument(
        "--require-sealed",
        action="store_true",
        help="the log's writer has stopped: fail unless the log ends with its signed closing "
        "checkpoint (no unsigned records after it, no tail cut off with it)",
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
        help="fail if more than N records follow the last checkpoint",
    )
    av.add_argument(
        "--max-unsealed-age",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="fail if records were written more than SECONDS after the last checkpoint",
    )
    av.set_defaults(func=command("audit", "audit_verify"))
    sh = _sub(audit_sub, "show", help="who called what, with what outcome")
    sh.add_argument("files", nargs="+", type=Path, help="audit log(s); one path finds the rest")
    sh.add_argument("--subject", help="only calls by this SPIFFE ID")
    sh.add_argument("--tool", help="only calls to this tool (or model)")
    sh.add_argument("--effect", choices=["allow", "deny", "step_up"], help="only this outcome")
    sh.add_argument("--since", help="only calls since: 30m, 2h, 1d, or an ISO 8601 time")
    sh.set_defaults(func=command("audit", "audit_show"))


def _approvals(sub: argparse._SubParsersAction) -> None:
    ap = _sub(
        sub,
        "approvals",
        help="list, approve and deny step-up approvals (the admin API)",
        description="Talks to the sidecar's approvals admin API: a unix socket (name yourself "
        "with --as) or HOST:PORT with mTLS (your X.509-SVID from --workload-api, or --cert, "
        "--key and --bundle files). The address: --admin, or approvals.listen in --config.",
    )
    _admin_args(ap)
    ap_sub = ap.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND")
    al = _sub(ap_sub, "list", help="approvals, newest first")
    al.add_argument(
        "--state", action="append", default=[], help="only this state (repeatable; default: all)"
    )
    al.add_argument("--limit", type=int, default=100, help="at most this many")
    al.set_defaults(func=command("approvals", "approvals"))
    ash = _sub(ap_sub, "show", help="one approval, whole")
    ash.add_argument("id", help="the approval's id")
    ash.set_defaults(func=command("approvals", "approvals"))
    for name, verb in (("approve", "grant"), ("deny", "refuse")):
        ad = _sub(ap_sub, name, help=f"{verb} a pending approval")
        ad.add_argument("id", help="the approval's id")
        ad.add_argument(
            "--reason", required=True, help="recorded in the audit log and policy input"
        )
        ad.set_defaults(func=command("approvals", "approvals"))
    aw = _sub(ap_sub, "watch", help="print approvals as they are created and change")
    aw.set_defaults(func=command("approvals", "approvals"))


def _admin_args(parser: argparse.ArgumentParser) -> None:
    """How to reach the admin listener (approvals.listen) and who you are there."""
    parser.add_argument("--admin", help="unix:///PATH or HOST:PORT of the approvals API")
    parser.add_argument("--config", type=Path, help="the sidecar's config (for approvals.listen)")
    parser.add_argument(
        "--as", dest="approver", help="your name on a unix socket (default: your login name)"
    )
    parser.add_argument(
        "--workload-api", default="", help="Workload API socket for your SVID (default: none)"
    )
    parser.add_argument("--cert", type=Path, help="your X.509-SVID chain (PEM)")
    parser.add_argument("--key", type=Path, help="its private key (PEM)")
    parser.add_argument("--bundle", type=Path, help="trust bundle to verify the sidecar (PEM)")
    parser.add_argument("--server-name", help="a DNS SAN of the sidecar's SVID")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _mcp(sub: argparse._SubParsersAction) -> None:
    mp = _sub(
        sub,
        "mcp",
        help="review and accept MCP tool definitions (the admin API)",
        description="A tool whose definition an upstream MCP server changed after it was "
        "pinned is hidden and denied by the baseline policy until an operator accepts it. "
        "Talks to the admin API like `approvals` (same address and identity options).",
    )
    _admin_args(mp)
    mp_sub = mp.add_subparsers(dest="mcp_command", required=True, metavar="COMMAND")
    ml = _sub(mp_sub, "list", help="the tools MCP servers list now, with their pins")
    ml.add_argument("--changed", action="store_true", help="only changed definitions")
    ml.set_defaults(func=command("mcp", "mcp"))
    ms = _sub(mp_sub, "show", help="one tool's current definition, whole")
    ms.add_argument("name", help="SERVER.tool")
    ms.set_defaults(func=command("mcp", "mcp"))
    ma = _sub(mp_sub, "accept", help="pin a tool to its current definition (audited)")
    ma.add_argument("name", help="SERVER.tool")
    ma.add_argument(
        "--hash",
        required=True,
        help="the definition's hash as `mcp show` printed it: what you reviewed",
    )
    ma.add_argument("--reason", required=True, help="recorded in the audit log")
    ma.set_defaults(func=command("mcp", "mcp"))


def _a2a(sub: argparse._SubParsersAction) -> None:
    aa = _sub(
        sub,
        "a2a",
        help="review and accept A2A peer agent cards (the admin API)",
        description="A peer whose agent card changed after it was pinned keeps its pinned "
        "skills, and the baseline policy refuses calls to it (peer_card_changed) until an "
        "operator accepts the new card. Talks to the admin API like `approvals`.",
    )
    _admin_args(aa)
    aa_sub = aa.add_subparsers(dest="a2a_command", required=True, metavar="COMMAND")
    al = _sub(aa_sub, "list", help="every peer's card digest against its pin")
    al.add_argument("--changed", action="store_true", help="only changed (or failing) cards")
    al.set_defaults(func=command("a2a", "a2a"))
    ash = _sub(aa_sub, "show", help="the card a peer serves now, whole")
    ash.add_argument("peer", help="PEER (a2a_peers.NAME)")
    ash.set_defaults(func=command("a2a", "a2a"))
    ac = _sub(aa_sub, "accept", help="pin a peer to the card it serves now (audited)")
    ac.add_argument("peer", help="PEER (a2a_peers.NAME)")
    ac.add_argument(
        "--digest",
        required=True,
        help="the card's digest as `a2a list` printed it: what you reviewed",
    )
    ac.add_argument("--reason", required=True, help="recorded in the audit log")
    ac.set_defaults(func=command("a2a", "a2a"))


def _dev(sub: argparse._SubParsersAction) -> None:
    dev = _sub(sub, "dev", help="DEVELOPMENT ONLY helpers")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="COMMAND")
    wl = _sub(
        dev_sub,
        "workload-api",
        help="DEVELOPMENT ONLY: a SPIFFE Workload API that issues SVIDs from an in-memory CA",
        description="DEVELOPMENT ONLY. Serves the SPIFFE Workload API on unix sockets, one "
        "identity per socket, signed by an in-memory CA. It attests nothing: never use it "
        "outside development and tests. SIGHUP rotates every SVID and the JWT key.",
    )
    wl.add_argument("--trust-domain", required=True, help="the CA's trust domain")
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
    wl.add_argument(
        "--rotate-every", type=float, help="rotate everything every N seconds (default: never)"
    )
    wl.add_argument("--bundle-out", type=Path, help="write the X.509 trust bundle (PEM) here")
    wl.set_defaults(func=run.dev_workload_api)
