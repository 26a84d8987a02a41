"""``server.workers``: N sidecar processes serving the same listeners, supervised.

One Python process is one core (the GIL), so ``agent-sidecar serve`` with ``server.workers``
above 1 becomes a small supervisor (sidecar/supervisor.py) that runs N worker processes
(``serve`` again, told its place by ``AGENT_SIDECAR_WORKER=i/n``) and never imports gRPC, the
engine or the configuration itself. This module is the workers' side: their role, the CPU
count, the audit segments, the status they read, and how they tie themselves to the
supervisor. The default is one process and no supervisor (docs/performance.md).

How the listeners are shared: every worker binds the TCP listeners (gRPC, front door) with
``SO_REUSEPORT``, and the kernel spreads *connections* across them (a gRPC channel is one
connection: one agent channel is served by one worker; agents that open several channels, or
several agents, use every core). A unix socket cannot be shared that way (gRPC can neither
adopt an inherited listening socket nor share a path), so unix listeners, the approvals API
and the admin (metrics) listener are served by worker 0 alone; configure a TCP listener to use
every core. Worker 0 starts first (it creates what the others then share: the development
audit key, the state database); the others start once it is serving.

What stays correct across workers: approvals, tasks and budgets live in the shared state
database (SQLite, WAL, cross-process locking), waiting calls poll it, and each worker writes
its own audit chain segment (``audit.log``, ``audit.worker1.log`` ...), each sealed and
checkpointed on its own; ``audit verify audit.log`` checks them all.

A worker that exits is restarted (at once, or with a doubling backoff up to 30 s when it
keeps dying young). The supervisor keeps ``workers.json`` in the state directory; every
worker's health check reads it and reports NOT_SERVING while fewer workers run than
configured, so a crash shows in the health check until the replacement serves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.server_settings import MAX_WORKERS
from sidecar.supervisor import (
    READY_FD_ENV,
    STATUS_FILE,
    SUPERVISE_ENV,
    SUPERVISOR_ENV,
    WORKER_ENV,
    exec_supervisor,
)

if TYPE_CHECKING:
    from sidecar.config import Settings

__all__ = [
    "READY_FD_ENV",
    "STATUS_FILE",
    "SUPERVISE_ENV",
    "SUPERVISOR_ENV",
    "WORKER_ENV",
    "WorkerRole",
    "WorkersStatus",
    "available_cpus",
    "die_with_supervisor",
    "exec_supervisor",
    "planned_workers",
    "segment_path",
    "segments",
    "signal_ready",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class WorkerRole:
    """This process's place among the workers: worker ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker {self.index} of {self.count} is not a worker")

    @property
    def primary(self) -> bool:
        """Worker 0: serves what cannot be shared (unix listeners, approvals, admin)."""
        return self.index == 0

    @property
    def shared(self) -> bool:
        return self.count > 1

    @classmethod
    def from_env(cls) -> WorkerRole:
        value = os.environ.get(WORKER_ENV, "")
        if not value:
            return cls()
        index, _, count = value.partition("/")
        return cls(int(index), int(count))


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers),
    rounded up (a 1.5-CPU limit is 2). What ``server.workers: auto`` runs."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


ZERO_WORKERS_WARNING = (
    "server.workers: 0 means one process (it used to mean one per CPU); write server.workers: "
    "auto for one per CPU the container may use, or 1 (docs/configuration.md)"
)
CAPPED_WARNING = "server.workers: auto: %d CPUs available, capped at %d workers"


def planned_workers(settings: Settings, cpus: int) -> int:
    """``settings.worker_count(cpus)``, saying so where it is not what was written: an
    explicit 0 (a value whose meaning changed) and ``auto`` capped at MAX_WORKERS. Said once,
    by ``serve`` before it becomes the supervisor, not again by every worker."""
    count = settings.worker_count(cpus)
    if WORKER_ENV not in os.environ:
        if settings.server.workers == 0:
            log.warning(ZERO_WORKERS_WARNING)
        elif settings.server.workers == "auto" and settings.shares_tcp and cpus > MAX_WORKERS:
            log.warning(CAPPED_WARNING, cpus, MAX_WORKERS)
    return count


def _cgroup_quota(root: Path) -> float | None:
    """The CPU limit in CPUs, or None for none (or none readable: the affinity decides)."""
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):  # cgroup v2
        max_, period = (root / "cpu.max").read_text().split()
        if max_ == "max":
            return None
        quota = int(max_) / int(period)
        return quota if quota > 0 else None
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def segment_path(path: Path, index: int) -> Path:
    """Worker ``index``'s audit segment: ``audit.log`` for worker 0, ``audit.worker1.log`` ..."""
    if index == 0:
        return path
    return path.with_name(f"{path.stem}.worker{index}{path.suffix}")


def segments(path: Path) -> list[Path]:
    """``path`` and the other workers' segments beside it, in worker order."""
    found: dict[int, Path] = {}
    prefix, suffix = f"{path.stem}.worker", path.suffix
    for candidate in path.parent.glob(f"{prefix}*{suffix}"):
        index = candidate.name[len(prefix) : len(candidate.name) - len(suffix) or None]
        if index.isdigit() and int(index) > 0:
            found[int(index)] = candidate
    return [path, *(found[i] for i in sorted(found))]


@dataclass
class WorkersStatus:
    """What the supervisor publishes in ``workers.json`` (sidecar/supervisor.py writes it)."""

    expected: int
    alive: int = 0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    last_exit: str = ""

    @property
    def complete(self) -> bool:
        return self.alive >= self.expected

    @classmethod
    def read(cls, state_dir: Path) -> WorkersStatus | None:
        """The supervisor's status, or None when there is none (a single process)."""
        try:
            doc = json.loads((state_dir / STATUS_FILE).read_text())
            return cls(**doc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # unreadable: count it as incomplete
            return cls(expected=1, alive=0)

    def write(self, state_dir: Path) -> None:
        """What the supervisor's own writer does (sidecar/supervisor.py), for tests and tools."""
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATUS_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(state_dir / STATUS_FILE)


def die_with_supervisor() -> None:
    """Have the kernel send this worker SIGTERM (a graceful stop) when its supervisor dies,
    so that a supervisor killed with SIGKILL leaves no worker holding the listeners."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if WORKER_ENV not in os.environ or not supervisor.isdigit():
        return
    import ctypes  # here: the supervisor imports none of this module

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(supervisor):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def signal_ready() -> None:
    """Tell the supervisor (if any) that this worker serves."""
    fd = os.environ.pop(READY_FD_ENV, "")
    if not fd:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))
