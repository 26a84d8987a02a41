"""``egress-lock node-agent``: install the lock into pods from the node, as istio-cni does.

Pod Security ``restricted`` forbids any capability but ``NET_BIND_SERVICE`` to a pod's
containers, so the rules cannot be loaded from inside an agent pod of such a namespace. The
node agent (a DaemonSet, root, ``hostPID``, in its own ``privileged`` namespace) does it from
outside: it watches the node's processes for the pod's first init container, ``agent-sidecar
egress-lock verify``, enters that process's network namespace and loads the ruleset there.
The rules are the node agent's own (its arguments), never anything the pod says, so a pod
that fakes the command line only locks itself, and a namespace is locked once: a later
process of the pod that fakes it changes nothing. The host's namespace and the node agent's own
are never touched. Nothing else in the pod has started yet: ``verify`` holds it until it sees
the rules in force.

Nothing is read from the pod's filesystem (a pod chooses its own resolv.conf, and a FIFO there
would block the agent): DNS servers are the agent's own ``--dns-server`` arguments. The pod's
namespace is opened once, by fd; the process is checked to still be the one scanned (same
pid, same start time) after the fd is open, and every command enters that fd
(``nsenter --net=/proc/self/fd/N``), so a pid reused in between cannot redirect the rules
into another namespace.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.egress_lock.netns import apply, fd_path, host_netns, locked
from sidecar.egress_lock.rules import EgressLockError, EgressRules

__all__ = ["NodeAgent", "is_verify"]

log = logging.getLogger(__name__)
MARKER = (b"egress-lock", b"verify")


def is_verify(cmdline: bytes) -> bool:
    """Whether a /proc/PID/cmdline is ``... egress-lock verify ...``."""
    args = cmdline.split(b"\0")
    return any(args[i : i + 2] == list(MARKER) for i in range(len(args) - 1))


def _start_time(proc: Path, pid: str) -> str | None:
    try:
        stat = (proc / pid / "stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, after the (comm)


@dataclass
class NodeAgent:
    """Scan ``proc`` every ``interval_s``; lock the namespace of each new ``verify`` process."""

    rules: EgressRules
    proc: Path = Path("/proc")
    interval_s: float = 0.5
    _done: set[tuple[str, str]] = field(default_factory=set)
    locked: int = 0

    def scan_once(self) -> int:
        """One pass; the number of namespaces locked."""
        own = os.stat(self.proc / "self/ns/net").st_ino
        count = 0
        seen: set[tuple[str, str]] = set()
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            start = _start_time(self.proc, entry.name)
            if start is None:
                continue
            key = (entry.name, start)
            seen.add(key)
            if key in self._done:
                continue
            try:
                cmdline = (self.proc / entry.name / "cmdline").read_bytes()
            except OSError:
                continue
            if not is_verify(cmdline):
                self._done.add(key)
                continue
            self._done.add(key)
            if self._lock(entry.name, start, own):
                count += 1
        self._done &= seen  # forget exited processes
        self.locked += count
        return count

    def _lock(self, pid: str, start: str, own_netns: int) -> bool:
        try:
            fd = os.open(self.proc / pid / "ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.error("cannot open the network namespace of pid %s: %s", pid, exc)
            return False
        try:
            return self._lock_fd(pid, start, fd, own_netns)
        finally:
            os.close(fd)

    def _lock_fd(self, pid: str, start: str, fd: int, own_netns: int) -> bool:
        netns = fd_path(fd)
        inode = os.fstat(fd).st_ino
        if _start_time(self.proc, pid) != start:
            # The scanned process exited and its pid was reused before the fd was opened: the
            # fd may be another process's namespace.
            log.warning("pid %s changed while being locked: not locked", pid)
            return False
        try:
            if inode == own_netns or host_netns(netns, self.proc):
                log.warning("pid %s is in the host's network namespace: not locked", pid)
                return False
            if locked(netns):
                # Locked once, by the pod's first init container; never again, so a process
                # of the pod that fakes the command line later cannot change the rules.
                log.info("pid %s: its network namespace is already locked", pid)
                return False
            # The pod's namespace may hold a mesh CNI's tables: not a reason to leave it open.
            apply(self.rules, netns=netns, force=True)
        except (OSError, EgressLockError) as exc:
            log.error("cannot lock the network namespace of pid %s: %s", pid, exc)
            return False
        log.info("egress locked", extra={"pid": int(pid), "netns": inode})
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.scan_once()
            stop.wait(self.interval_s)
