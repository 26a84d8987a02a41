"""The egress lock: packet-filter rules that let only the sidecar's users leave the pod.

An agent shares its pod's network namespace with the sidecar, so nothing in the sidecar can
stop it from opening a connection of its own, around every decision and audit record. The
kernel can: an nftables ``output`` hook in the pod's network namespace accepts

* everything on loopback (the agent reaches the sidecar there),
* packets of connections already established (replies to connections the pod accepted),
* connections opened by the allowed users (the sidecar's uid, OPA's when it is injected),
* DNS (port 53, UDP and TCP) to the pod's resolvers, when asked for,

and rejects every other new connection leaving the pod (a TCP reset or an ICMP
"administratively prohibited", so the agent fails fast instead of hanging on a drop). The
rules live in their own table, replaced whole on each apply, so applying twice changes
nothing. In Kubernetes an init container (root, ``NET_ADMIN`` only) applies them before any
other container starts; the rules outlive it, as they belong to the namespace.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = ["TABLE", "EgressLockError", "EgressRules", "apply", "resolvers"]

TABLE = "agent_sidecar_egress"
_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no user"


class EgressLockError(SidecarError):
    """The rules are invalid, or the kernel refused them (no ``NET_ADMIN``, no nf_tables)."""


@dataclass(frozen=True)
class EgressRules:
    """Who may open connections leaving the pod: these uids, plus DNS to these resolvers."""

    allowed_uids: tuple[int, ...]
    dns_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.allowed_uids:
            raise EgressLockError("at least one uid (the sidecar's) must be allowed out")
        for uid in self.allowed_uids:
            if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= _MAX_UID:
                raise EgressLockError(f"not a uid: {uid!r}")
        for server in self.dns_servers:
            try:
                ipaddress.ip_address(server)
            except ValueError as exc:
                raise EgressLockError(f"not an IP address for DNS: {server!r}") from exc

    def render(self) -> str:
        """The nft script: declare the table, delete it, define it anew (atomic, idempotent)."""
        uids = ", ".join(str(u) for u in sorted(set(self.allowed_uids)))
        v4 = sorted({s for s in self.dns_servers if ipaddress.ip_address(s).version == 4})
        v6 = sorted({s for s in self.dns_servers if ipaddress.ip_address(s).version == 6})
        dns = [
            f"    {family} daddr {{ {', '.join(addrs)} }} meta l4proto {{ tcp, udp }} "
            "th dport 53 accept"
            for family, addrs in (("ip", v4), ("ip6", v6))
            if addrs
        ]
        lines = [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain output {",
            "    type filter hook output priority filter; policy accept;",
            '    oifname "lo" accept',
            "    ct state established,related accept",
            f"    meta skuid {{ {uids} }} accept",
            *dns,
            "    meta l4proto tcp counter reject with tcp reset",
            "    counter reject with icmpx type admin-prohibited",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"


def resolvers(resolv_conf: Path) -> tuple[str, ...]:
    """The ``nameserver`` addresses of a resolv.conf (what the pod's DNS traffic goes to)."""
    try:
        text = resolv_conf.read_text(encoding="utf-8")
    except OSError as exc:
        raise EgressLockError(f"{resolv_conf}: cannot read: {exc.strerror}") from exc
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]  # fe80::1%eth0: the zone is not an address
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue
            found.append(address)
    if not found:
        raise EgressLockError(f"{resolv_conf}: no nameserver line; DNS cannot be allowed")
    return tuple(dict.fromkeys(found))


def apply(rules: EgressRules, nft: str = "nft", extra_args: Iterable[str] = ()) -> None:
    """Load the rules into the current network namespace; raise if the kernel refuses."""
    binary = shutil.which(nft)
    if binary is None:
        raise EgressLockError(f"{nft}: not found (the image installs nftables)")
    try:
        done = subprocess.run(
            [binary, *extra_args, "-f", "-"],
            input=rules.render(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EgressLockError(f"cannot run {nft}: {exc}") from exc
    if done.returncode != 0:
        raise EgressLockError(
            f"{nft} refused the rules (exit {done.returncode}; the init container needs "
            f"NET_ADMIN): {done.stderr.strip()[:500]}"
        )
