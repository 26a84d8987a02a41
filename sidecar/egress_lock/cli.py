"""``agent-sidecar egress-lock [verify | node-agent]``: install, verify, install from a node."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from sidecar.egress_lock.rules import Allow, EgressLockError, EgressRules, resolvers

__all__ = ["add_parser", "install"]

Sub = Callable[..., argparse.ArgumentParser]


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="a uid that may open any connection leaving the pod (the sidecar's); repeatable",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="SPEC",
        help="an explicit way out, 'cidrs=CIDR,...[;ports=PORT,...][;uids=UID,...]': to those "
        "CIDRs (and ports) for those uids (a mesh proxy's) or, without uids, for every "
        "process in the pod; repeatable",
    )
    parser.add_argument(
        "--dns-server",
        action="append",
        default=[],
        metavar="IP",
        help="let every process reach this nameserver (the cluster DNS) on port 53 (an "
        "exfiltration channel: only if the agent must resolve names itself); repeatable. "
        "Never read from the pod, which chooses its own resolv.conf",
    )


def add_parser(sub: argparse._SubParsersAction, make: Sub) -> None:
    lock = make(
        sub,
        "egress-lock",
        help="install the pod's egress rules: only the given uids may leave (needs NET_ADMIN)",
        description="Installs nftables rules in the current network namespace: connections "
        "leaving it may be opened only by the --allow-uid users and what --allow names; "
        "loopback, replies and (with --dns-server) DNS to those nameservers stay "
        "open. Replaces its own table, so running it twice changes nothing. Refuses the "
        "host's network namespace, or one already holding other nftables tables, unless "
        "--force. See also: egress-lock verify, egress-lock node-agent.",
    )
    _rule_options(lock)
    lock.add_argument(
        "--allow-dns",
        action="store_true",
        help="by hand only: also let every process reach the nameservers of --resolv-conf",
    )
    lock.add_argument(
        "--resolv-conf",
        type=Path,
        default=Path("/etc/resolv.conf"),
        help="where --allow-dns reads the nameservers",
    )
    lock.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the nft rules instead of installing them",
    )
    lock.add_argument(
        "--force",
        action="store_true",
        help="install even in the host's network namespace or one holding other tables",
    )
    lock.set_defaults(func=install)
    modes = lock.add_subparsers(dest="lock_command", required=False, metavar="MODE")
    verify = make(
        modes,
        "verify",
        help="wait, unprivileged, until the lock is in force here (the pod's first init "
        "container when the node agent installs it); exit 1 after --timeout",
    )
    verify.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the node agent"
    )
    verify.set_defaults(func=_verify)
    node = make(
        modes,
        "node-agent",
        help="on a node (root, hostPID): lock every pod whose init container runs "
        "'egress-lock verify', with these rules",
    )
    _rule_options(node)
    node.add_argument("--proc", type=Path, default=Path("/proc"), help="the node's /proc (hostPID)")
    node.add_argument("--interval", type=float, default=0.5, help="seconds between scans")
    node.set_defaults(func=_node_agent)


def _rules(args: argparse.Namespace, dns: tuple[str, ...] = ()) -> EgressRules:
    if not args.allow_uid:
        raise EgressLockError("give at least one --allow-uid (the sidecar's)")
    allows = tuple(Allow.parse(spec) for spec in args.allow)
    servers = tuple(dict.fromkeys([*args.dns_server, *dns]))
    return EgressRules(tuple(args.allow_uid), servers, allows)


def install(args: argparse.Namespace) -> int:
    from sidecar.egress_lock.netns import apply

    dns = resolvers(args.resolv_conf) if args.allow_dns else ()
    rules = _rules(args, dns)
    dns = rules.dns_servers
    if args.print_only:
        print(rules.render(), end="")
        return 0
    apply(rules, force=args.force)
    allowed = ", ".join(str(u) for u in sorted(set(args.allow_uid)))
    extra = f"; {len(rules.allow)} explicit allow(s)" if rules.allow else ""
    dns_note = f"; DNS to {', '.join(dns)}" if dns else ""
    print(f"egress locked: only uid {allowed} may leave the pod (and loopback){extra}{dns_note}")
    return 0


def _seconds(value: float, option: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise EgressLockError(f"{option} must be a number of seconds > 0, not {value!r}")
    return value


def _verify(args: argparse.Namespace) -> int:
    from sidecar.egress_lock.verify import wait_until_locked

    _seconds(args.timeout, "--timeout")
    waited = wait_until_locked(args.timeout)
    print(f"egress lock in force (after {waited:.1f}s)")
    return 0


def _node_agent(args: argparse.Namespace) -> int:
    from sidecar.egress_lock.node import NodeAgent
    from sidecar.logs import configure_logging

    configure_logging("info")
    _seconds(args.interval, "--interval")
    agent = NodeAgent(_rules(args), proc=args.proc)
    agent.interval_s = args.interval
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger(__name__).info("node agent scanning %s", args.proc)
    print("node agent ready", flush=True)
    agent.run(stop)
    return 0
