"""Loading the ruleset into a network namespace, and refusing the ones that are not a pod's.

Run by hand as root on a workstation, ``egress-lock`` would cut the host off from everything
but the listed uids. So, unless forced, it refuses a namespace that is

* the host's: the kernel's initial network namespace (its inode is fixed, ``0xEFFFFFF9``,
  on current kernels), or pid 1's when this process sees the host's pid 1;
* not fresh: one that already holds nftables tables other than the lock's own (a host's
  firewall, kube-proxy, Docker); a new pod's network namespace holds none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sidecar.egress_lock.rules import TABLE, EgressLockError, EgressRules

__all__ = ["apply", "fd_path", "foreign_tables", "host_netns", "locked", "refusal", "tables"]

_PROC_NET_INIT_INO = 0xEFFFFFF9  # include/linux/proc_ns.h
_PROC_PID_INIT_INO = 0xEFFFFFFC
_SELF_NETNS = Path("/proc/self/ns/net")


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def host_netns(netns: Path = _SELF_NETNS, proc: Path = Path("/proc")) -> bool:
    """Whether ``netns`` is the host's network namespace (as far as this process can tell)."""
    inode = _inode(netns)
    if inode is None:
        raise EgressLockError(f"{netns}: not a network namespace this process can see")
    if inode == _PROC_NET_INIT_INO:
        return True
    in_host_pids = _inode(proc / "self/ns/pid") == _PROC_PID_INIT_INO
    return in_host_pids and _inode(proc / "1/ns/net") == inode


def fd_path(fd: int) -> Path:
    """The path that names an open namespace fd, in this process and in a child given it."""
    return Path(f"/proc/self/fd/{fd}")


def _run(command: list[str], netns: Path | None, stdin: str = "") -> subprocess.CompletedProcess:
    binary = shutil.which(command[0])
    if binary is None:
        raise EgressLockError(f"{command[0]}: not found (the image installs nftables, util-linux)")
    argv = [binary, *command[1:]]
    pass_fds: tuple[int, ...] = ()
    if netns is not None:
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise EgressLockError("nsenter: not found (util-linux)")
        argv = [nsenter, f"--net={netns}", "--", *argv]
        if netns.parent == Path("/proc/self/fd"):  # an fd the caller holds: the child gets it
            pass_fds = (int(netns.name),)
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            pass_fds=pass_fds,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EgressLockError(f"cannot run {command[0]}: {exc}") from exc


def tables(netns: Path | None = None, nft: str = "nft") -> list[str]:
    """The nftables tables in the namespace (``family name``)."""
    done = _run([nft, "list", "tables"], netns)
    if done.returncode != 0:
        raise EgressLockError(
            f"{nft} cannot list the tables (exit {done.returncode}; the lock needs NET_ADMIN "
            f"in the pod's network namespace): {done.stderr.strip()[:300]}"
        )
    return [" ".join(line.split()[1:]) for line in done.stdout.splitlines() if line.strip()]


def locked(netns: Path | None = None, nft: str = "nft") -> bool:
    """Whether the namespace already holds the lock's table."""
    return f"inet {TABLE}" in tables(netns, nft)


def foreign_tables(netns: Path | None = None, nft: str = "nft") -> list[str]:
    """The nftables tables in the namespace other than the lock's own."""
    return [t for t in tables(netns, nft) if t != f"inet {TABLE}"]


def refusal(netns: Path | None = None, nft: str = "nft") -> str | None:
    """Why this namespace is not a fresh pod network namespace, or None if it is one."""
    if host_netns(netns or _SELF_NETNS):
        return "this is the host's network namespace, not a pod's"
    others = foreign_tables(netns, nft)
    if others:
        return (
            "this network namespace is not a fresh pod's: it already holds nftables tables "
            f"({', '.join(others[:5])}), as a host's firewall, kube-proxy or Docker would"
        )
    return None


def apply(
    rules: EgressRules, *, netns: Path | None = None, force: bool = False, nft: str = "nft"
) -> None:
    """Load the rules into ``netns`` (default: the current one); raise if refused.

    Without ``force``, the host's namespace or one holding other tables is refused first.
    """
    if not force:
        reason = refusal(netns, nft)
        if reason is not None:
            raise EgressLockError(
                f"refusing to install the egress lock: {reason}. It would cut every process "
                "here but the allowed uids off the network. Run it in a pod's network "
                "namespace, or pass --force if this is really meant"
            )
    done = _run([nft, "-f", "-"], netns, rules.render())
    if done.returncode != 0:
        raise EgressLockError(
            f"{nft} refused the rules (exit {done.returncode}; installing needs NET_ADMIN): "
            f"{done.stderr.strip()[:500]}"
        )
