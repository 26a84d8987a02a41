"""``server.workers``: N sidecar processes serving the same listeners, supervised.

One Python process is one core (the GIL), so ``agent-sidecar serve`` with ``server.workers``
above 1 becomes a small supervisor that runs N worker processes (``serve`` again, told its
place by ``AGENT_SIDECAR_WORKER=i/n``) and never imports gRPC or the engine itself.

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
import ctypes
import json
import logging
import math
import os
import queue
import select
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WORKER_ENV",
    "Supervisor",
    "WorkerRole",
    "WorkersStatus",
    "available_cpus",
    "segment_path",
    "segments",
]

log = logging.getLogger(__name__)

WORKER_ENV = "AGENT_SIDECAR_WORKER"
READY_FD_ENV = "AGENT_SIDECAR_READY_FD"
SUPERVISOR_ENV = "AGENT_SIDECAR_SUPERVISOR"
STATUS_FILE = "workers.json"
# A worker that dies younger than this is restarted after a doubling backoff.
YOUNG_S = 10.0
MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How long a starting worker may take to serve.
START_TIMEOUT_S = 120.0


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


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def _cgroup_quota() -> float | None:
    with contextlib.suppress(OSError, ValueError):  # cgroup v2
        max_, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if max_ == "max" else int(max_) / int(period)
    with contextlib.suppress(OSError, ValueError):  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
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
    """What the supervisor publishes in ``workers.json``."""

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
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATUS_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(state_dir / STATUS_FILE)


class WorkerFailedToStart(RuntimeError):
    """Worker 0 exited before serving: the configuration or environment is wrong."""

    def __init__(self, code: int) -> None:
        super().__init__(f"worker 0 exited with {code} before serving")
        self.code = code


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None


class Supervisor:
    """Runs ``count`` workers of ``command`` (``serve`` with its arguments) until signalled."""

    def __init__(self, command: list[str], count: int, state_dir: Path, grace_s: float) -> None:
        self._command = command
        self._count = count
        self._state_dir = state_dir
        self._grace_s = grace_s
        self._workers = [_Worker(i) for i in range(count)]
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.status = WorkersStatus(expected=count)
        self._stopping = False

    def run(self) -> int:
        """Start worker 0, then the others; restart any that exits; stop on SIGTERM/SIGINT
        (forwarded), forward SIGHUP (policy reload). The exit code of a failed start."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self._events.put(("signal", signum)))
        self._publish()
        try:
            if not self._start(self._workers[0]):
                proc = self._workers[0].proc
                raise WorkerFailedToStart((proc.wait() if proc else 1) or 1)
            for worker in self._workers[1:]:
                self._start(worker)
            self._supervise()
        except WorkerFailedToStart as exc:
            log.critical("worker 0 could not start", extra={"exit_code": exc.code})
            self._stop_all()
            return exc.code
        finally:
            with contextlib.suppress(OSError):
                (self._state_dir / STATUS_FILE).unlink()
        return 0

    def _start(self, worker: _Worker) -> bool:
        """Spawn ``worker`` and wait until it serves (True) or exits (False)."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[WORKER_ENV] = f"{worker.index}/{self._count}"
        env[READY_FD_ENV] = str(write_fd)
        env[SUPERVISOR_ENV] = str(os.getpid())
        try:
            worker.proc = subprocess.Popen(self._command, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        worker.started = time.monotonic()
        worker.restart_at = None
        proc = worker.proc
        threading.Thread(
            target=lambda: self._events.put(("exit", (worker, proc, proc.wait()))),
            name=f"wait-worker-{worker.index}",
            daemon=True,
        ).start()
        with os.fdopen(read_fd, "rb") as ready:  # EOF without a byte: the worker exited
            # poll, not select(): select() refuses fd numbers beyond FD_SETSIZE (1024)
            poller = select.poll()
            poller.register(ready, select.POLLIN)
            readable = poller.poll(START_TIMEOUT_S * 1000)
            serving = bool(readable) and ready.read(1) == b"1"
        if not serving and proc.poll() is None:  # hung while starting
            log.error("worker did not serve in time", extra={"worker": worker.index})
            proc.kill()
        if serving:
            self._publish()
            log.info("worker serving", extra={"worker": worker.index, "pid": proc.pid})
        return serving

    def _supervise(self) -> None:
        while True:
            due = [w.restart_at for w in self._workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                kind, value = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "signal":
                if value == signal.SIGHUP:
                    self._signal_all(signal.SIGHUP)
                    continue
                self._stop_all()
                return
            if kind == "exit":
                self._exited(*value)
            now = time.monotonic()
            for worker in self._workers:
                due_now = worker.restart_at is not None and worker.restart_at <= now
                if due_now and not self._start(worker):
                    self._schedule_restart(worker)

    def _exited(self, worker: _Worker, proc: subprocess.Popen[bytes], code: int) -> None:
        if self._stopping or proc is not worker.proc:
            return
        self.status.restarts += 1
        self.status.last_exit = f"worker {worker.index} (pid {proc.pid}) exited with {code}"
        log.error(
            "worker exited: restarting it",
            extra={"worker": worker.index, "pid": proc.pid, "exit_code": code},
        )
        worker.proc = None
        self._schedule_restart(worker)
        self._publish()

    def _schedule_restart(self, worker: _Worker) -> None:
        young = time.monotonic() - worker.started < YOUNG_S
        worker.backoff_s = min(MAX_BACKOFF_S, max(0.5, worker.backoff_s * 2)) if young else 0.0
        worker.restart_at = time.monotonic() + worker.backoff_s

    def _publish(self) -> None:
        running = [w.proc for w in self._workers if w.proc is not None and w.restart_at is None]
        self.status.alive = sum(1 for p in running if p.poll() is None)
        self.status.pids = [p.pid for p in running]
        self.status.write(self._state_dir)

    def _signal_all(self, sig: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def _stop_all(self) -> None:
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s + 10
        for worker in self._workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


def die_with_supervisor() -> None:
    """Have the kernel send this worker SIGTERM (a graceful stop) when its supervisor dies,
    so that a supervisor killed with SIGKILL leaves no worker holding the listeners."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if WORKER_ENV not in os.environ or not supervisor.isdigit():
        return
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
