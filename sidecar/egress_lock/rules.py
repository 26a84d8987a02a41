"""The lock's ruleset: who may open connections leaving the pod, rendered as one nft table.

The ``output`` hook of the pod's network namespace accepts, in order:

* everything on loopback (the agent reaches the sidecar there; a mesh's redirect lands there);
* replies (``ct direction reply``) of connections already established: to connections
  the pod accepted, and of connections an allowed process opened. Only replies: a packet in
  the original direction of a flow the kernel already tracks is judged as a new one (by its
  socket's uid), or a UDP socket of the agent's bound to a port the sidecar used would
  ride the sidecar's flow out (review finding: UDP flow reuse);
* connections opened by the allowed uids (the sidecar's, OPA's);
* each explicit :class:`Allow`: to its CIDRs (and ports), for its uids or for every uid;
* DNS (port 53) to the configured resolvers (the cluster DNS: never what the pod's
  resolv.conf says), only when asked for (an exfiltration channel);

and rejects every other new connection (a TCP reset, else ICMP "administratively
prohibited", so the agent fails fast instead of hanging).

The same table redirects TCP to a sentinel (TEST-NET ``192.0.2.1`` / ``2001:db8::1``, port 9,
never routed anywhere) to ``127.0.0.1:VERIFY_PORT``: only this table can make such a
connection arrive on the pod's own loopback, which is how ``egress-lock verify`` sees,
unprivileged, that the whole table is in force (it is loaded atomically).

Raw IP sockets pass the same hook; packet sockets (``AF_PACKET``) do not, which is why
agents must not hold ``NET_RAW`` (the webhook drops it, the admission policy refuses it).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = [
    "SENTINELS",
    "TABLE",
    "VERIFY_PORT",
    "Allow",
    "EgressLockError",
    "EgressRules",
    "resolvers",
]

TABLE = "agent_sidecar_egress"
SENTINELS = (("192.0.2.1", 9), ("2001:db8::1", 9))  # RFC 5737 / 3849: never routed anywhere
VERIFY_PORT = 15491  # where the sentinel lands, on the pod's loopback
_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no user"
_MAX_PORTS = 64
_MAX_CIDRS = 256
_MAX_RESOLV_CONF = 64 * 1024
_MAX_NAMESERVERS = 8


class EgressLockError(SidecarError):
    """The rules are invalid, the target is not a pod, or the kernel refused (no ``NET_ADMIN``)."""


def _uid(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UID:
        raise EgressLockError(f"not a uid: {value!r}")
    return value


@dataclass(frozen=True)
class Allow:
    """One explicit way out: to ``cidrs`` (on ``ports``, TCP and UDP; all ports if none), for
    ``uids`` (a mesh proxy's) or, with no uids, for every process of the pod."""

    cidrs: tuple[str, ...]
    ports: tuple[int, ...] = ()
    uids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.cidrs or len(self.cidrs) > _MAX_CIDRS:
            raise EgressLockError(f"an allow entry needs 1 to {_MAX_CIDRS} CIDRs")
        for cidr in self.cidrs:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except (TypeError, ValueError) as exc:
                raise EgressLockError(f"not a CIDR (address/prefix): {cidr!r}") from exc
        if len(self.ports) > _MAX_PORTS:
            raise EgressLockError(f"an allow entry takes at most {_MAX_PORTS} ports")
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise EgressLockError(f"not a port: {port!r}")
        for uid in self.uids:
            _uid(uid)

    @classmethod
    def parse(cls, text: str) -> Allow:
        """``cidrs=A/N,B/M[;ports=P,Q][;uids=U,V]`` (the CLI form; :meth:`to_arg` writes it)."""
        fields: dict[str, list[str]] = {}
        for part in text.split(";"):
            key, sep, value = part.strip().partition("=")
            if not sep or key not in ("cidrs", "ports", "uids") or key in fields:
                raise EgressLockError(
                    f"--allow {text!r}: expected cidrs=CIDR,...[;ports=PORT,...][;uids=UID,...]"
                )
            fields[key] = [v.strip() for v in value.split(",") if v.strip()]

        def ints(key: str) -> tuple[int, ...]:
            try:
                return tuple(int(v) for v in fields.get(key, []))
            except ValueError as exc:
                raise EgressLockError(f"--allow {text!r}: {key} must be numbers") from exc

        return cls(tuple(fields.get("cidrs", [])), ints("ports"), ints("uids"))

    def to_arg(self) -> str:
        parts = ["cidrs=" + ",".join(self.cidrs)]
        if self.ports:
            parts.append("ports=" + ",".join(map(str, self.ports)))
        if self.uids:
            parts.append("uids=" + ",".join(map(str, self.uids)))
        return ";".join(parts)

    def render(self) -> list[str]:
        uids = ", ".join(map(str, sorted(set(self.uids))))
        who = f"meta skuid {{ {uids} }} " if self.uids else ""
        where = ""
        if self.ports:
            ports = ", ".join(map(str, sorted(set(self.ports))))
            where = f" meta l4proto {{ tcp, udp }} th dport {{ {ports} }}"
        lines = []
        for family, version in (("ip", 4), ("ip6", 6)):
            nets = sorted(
                {c for c in self.cidrs if ipaddress.ip_network(c).version == version},
                key=lambda c: ipaddress.ip_network(c),
            )
            if nets:
                lines.append(f"    {who}{family} daddr {{ {', '.join(nets)} }}{where} accept")
        return lines


@dataclass(frozen=True)
class EgressRules:
    """Who may open connections leaving the pod: these uids, the explicit allows, DNS."""

    allowed_uids: tuple[int, ...]
    dns_servers: tuple[str, ...] = ()
    allow: tuple[Allow, ...] = ()

    def __post_init__(self) -> None:
        if not self.allowed_uids:
            raise EgressLockError("at least one uid (the sidecar's) must be allowed out")
        for uid in self.allowed_uids:
            _uid(uid)
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
        (v4_sentinel, port), (v6_sentinel, _) = SENTINELS
        lines = [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain output {",
            "    type filter hook output priority filter; policy accept;",
            '    oifname "lo" accept',
            "    ct direction reply ct state established,related accept",
            f"    meta skuid {{ {uids} }} accept",
            *(line for entry in self.allow for line in entry.render()),
            *dns,
            "    meta l4proto tcp counter reject with tcp reset",
            "    counter reject with icmpx type admin-prohibited",
            "  }",
            "  chain verify {",
            "    type nat hook output priority -150; policy accept;",
            f"    ip daddr {v4_sentinel} tcp dport {port} redirect to :{VERIFY_PORT}",
            f"    ip6 daddr {v6_sentinel} tcp dport {port} redirect to :{VERIFY_PORT}",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"


def resolvers(resolv_conf: Path) -> tuple[str, ...]:
    """The ``nameserver`` addresses of a resolv.conf: only for ``egress-lock --allow-dns`` run
    by hand. The node agent and the injected lock never read one: a pod chooses its own
    (``dnsConfig``), so they take the cluster DNS from their arguments (``--dns-server``)."""
    try:  # bounded, never blocking (a FIFO), never through a symlink: a regular file only
        fd = os.open(resolv_conf, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise EgressLockError(f"{resolv_conf}: cannot read: {exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EgressLockError(f"{resolv_conf}: not a regular file")
        text = os.read(fd, _MAX_RESOLV_CONF).decode("utf-8", errors="replace")
    except OSError as exc:
        raise EgressLockError(f"{resolv_conf}: cannot read: {exc}") from exc
    finally:
        os.close(fd)
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
    found = list(dict.fromkeys(found))[:_MAX_NAMESERVERS]
    if not found:
        raise EgressLockError(f"{resolv_conf}: no nameserver line; DNS cannot be allowed")
    return tuple(dict.fromkeys(found))
