"""The supervisor of ``server.workers`` processes: a process of its own, kept small.

``agent-sidecar serve`` reads and checks the configuration; when it is to run more than one
worker, it replaces itself (``exec``, same pid) with ``python -m sidecar.supervisor``. That
process imports this module, ``sidecar.logs`` and the standard library only: no grpc, no
policy engine (``sidecar/__init__.py`` skips loading it when ``AGENT_SIDECAR_SUPERVISE`` is
this process's own pid, set by the ``serve`` that exec'd into it), no configuration, no
dataclasses or argparse (``inspect`` and friends cost ~2 MB). It idles at ~14 MB RSS where
a supervisor that had loaded the sidecar held ~80 MB (docs/performance.md). It starts each
worker (``serve`` again, told its place by ``AGENT_SIDECAR_WORKER=i/n``), restarts any that
exits, publishes ``workers.json`` and forwards signals; sidecar/workers.py has the workers'
side. It logs as ``sidecar.supervisor``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "READY_FD_ENV",
    "STATUS_FILE",
    "SUPERVISE_ENV",
    "SUPERVISOR_ENV",
    "WORKER_ENV",
    "Supervisor",
    "exec_supervisor",
    "main",
]

# Not __name__: run as ``python -m sidecar.supervisor`` that is "__main__".
log = logging.getLogger("sidecar.supervisor")

WORKER_ENV = "AGENT_SIDECAR_WORKER"
READY_FD_ENV = "AGENT_SIDECAR_READY_FD"
SUPERVISOR_ENV = "AGENT_SIDECAR_SUPERVISOR"
# Set in the supervisor's own environment only, to the supervisor's pid (``exec`` keeps it):
# ``import sidecar`` then skips loading the policy engine's library (sidecar/__init__.py)
# in that process alone. Any other value (one set in a pod's env, or inherited by a process
# the supervisor did not become) is ignored. Never passed on to a worker.
SUPERVISE_ENV = "AGENT_SIDECAR_SUPERVISE"
STATUS_FILE = "workers.json"
# A worker that dies younger than this is restarted after a doubling backoff.
YOUNG_S = 10.0
MAX_BACKOFF_S = 30.0
# How long a starting worker may take to serve.
START_TIMEOUT_S = 120.0


class WorkerFailedToStart(RuntimeError):
    """Worker 0 exited before serving: the configuration or environment is wrong."""

    def __init__(self, code: int) -> None:
        super().__init__(f"worker 0 exited with {code} before serving")
        self.code = code


class _Worker:
    """One worker slot: its process (None while it waits for a restart) and its timings."""

    __slots__ = ("backoff_s", "index", "proc", "restart_at", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff_s = 0.0
        self.restart_at: float | None = None


class _Status:
    """What the supervisor publishes in ``workers.json`` (read by ``WorkersStatus.read`` in
    sidecar/workers.py, which the workers' health checks use)."""

    __slots__ = ("alive", "expected", "last_exit", "pids", "restarts")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.alive = 0
        self.restarts = 0
        self.pids: list[int] = []
        self.last_exit = ""

    def write(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATUS_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({name: getattr(self, name) for name in self.__slots__}))
        tmp.replace(state_dir / STATUS_FILE)


class Supervisor:
    """Runs ``count`` workers of ``command`` (``serve`` with its arguments) until signalled.
    ``clock`` is ``time.monotonic`` (a test passes its own to read the backoff schedule)."""

    def __init__(
        self,
        command: list[str],
        count: int,
        state_dir: Path,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._command = command
        self._count = count
        self._state_dir = state_dir
        self._grace_s = grace_s
        self._clock = clock
        self._workers = [_Worker(i) for i in range(count)]
        self._events: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.status = _Status(count)
        self._stopping = False
        # Set by the SIGTERM/SIGINT handler: a start in progress gives up waiting, and no
        # further worker is started (a stop during start-up is prompt, not N x START_TIMEOUT_S).
        self.stop_requested = False
        # Every backoff scheduled, (worker index, delay s), in order: what a test reads.
        self.scheduled: list[tuple[int, float]] = []
        self._wake_fd = -1  # run() opens it

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self.stop_requested = True
        self._events.put(("signal", signum))

    def run(self) -> int:
        """Start worker 0, then the others; restart any that exits; stop on SIGTERM/SIGINT
        (forwarded), forward SIGHUP (policy reload). The exit code of a failed start."""
        # The signal's byte on this pipe wakes a start's wait for its worker (_start polls
        # it beside the ready pipe); the handlers themselves run on the main thread as ever.
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self._wake_fd = wake_read
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        self._publish()
        try:
            if not self._start(self._workers[0]) and not self.stop_requested:
                proc = self._workers[0].proc
                raise WorkerFailedToStart((proc.wait() if proc else 1) or 1)
            for worker in self._workers[1:]:
                if self.stop_requested:  # no new worker once asked to stop
                    break
                self._start(worker)
            if self.stop_requested:
                self._stop_all()
            else:
                self._supervise()
        except WorkerFailedToStart as exc:
            log.critical("worker 0 could not start", extra={"exit_code": exc.code})
            self._stop_all()
            return exc.code
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be restored
                    signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
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
        env.pop(SUPERVISE_ENV, None)  # a worker loads the engine first, as any process
        try:
            worker.proc = subprocess.Popen(self._command, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        worker.started = self._clock()
        worker.restart_at = None
        proc = worker.proc
        threading.Thread(
            target=lambda: self._events.put(("exit", (worker, proc, proc.wait()))),
            name=f"wait-worker-{worker.index}",
            daemon=True,
        ).start()
        with os.fdopen(read_fd, "rb") as ready:
            outcome = self._wait_ready(ready)
        if outcome == "hung":  # neither served nor exited in time
            log.error("worker did not serve in time", extra={"worker": worker.index})
            proc.kill()
        if outcome == "ready":
            self._publish()
            log.info("worker serving", extra={"worker": worker.index, "pid": proc.pid})
        # "exited": its exit event follows; "stopping": _stop_all stops it with the others
        return outcome == "ready"

    def _wait_ready(self, ready: io.BufferedReader) -> str:
        """``ready`` (the worker wrote its byte), ``exited`` (EOF without it), ``hung`` (past
        START_TIMEOUT_S) or ``stopping`` (a stop was requested: the signal wakes this wait)."""
        # poll, not select(): select() refuses fd numbers beyond FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(ready, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.stop_requested:
            left_ms = max(0.0, deadline - time.monotonic()) * 1000
            readable = {fd for fd, _ in poller.poll(left_ms)}
            if ready.fileno() in readable:
                return "ready" if ready.read(1) == b"1" else "exited"
            if not readable:
                return "hung"
            with contextlib.suppress(BlockingIOError):  # the signal's byte: drained
                os.read(self._wake_fd, 512)
        return "stopping"

    def _supervise(self) -> None:
        while True:
            if self.stop_requested:  # the signal event may still be queued behind exits
                self._stop_all()
                return
            due = [w.restart_at for w in self._workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - self._clock()) if due else None
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
            now = self._clock()
            for worker in self._workers:
                if self.stop_requested:
                    break
                if worker.restart_at is not None and worker.restart_at <= now:
                    # a failed start is rescheduled by its exit event (_exited), always
                    # delivered, after a kill for hanging too: scheduling here as well
                    # doubled every backoff twice
                    self._start(worker)

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
        now = self._clock()
        young = now - worker.started < YOUNG_S
        worker.backoff_s = min(MAX_BACKOFF_S, max(0.5, worker.backoff_s * 2)) if young else 0.0
        worker.restart_at = now + worker.backoff_s
        self.scheduled.append((worker.index, worker.backoff_s))

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


def exec_supervisor(
    command: list[str], count: int, state_dir: Path, grace_s: float, log_level: str
) -> None:
    """Replace this process (same pid: whoever started ``serve`` still holds it) with the
    supervisor of ``count`` workers running ``command``. Does not return."""
    spec = {"count": count, "state_dir": str(state_dir), "grace_s": grace_s}
    argv = [sys.executable, "-m", "sidecar.supervisor", json.dumps(spec | {"log": log_level})]
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # our own interpreter, an argument list, no shell
    env = {**os.environ, SUPERVISE_ENV: str(os.getpid())}  # this pid: exec keeps it
    os.execve(sys.executable, [*argv, *command], env)  # noqa: S606


class UsageError(ValueError):
    """The supervisor was started with a spec it cannot run (exit 2, said on stderr)."""


def parse_spec(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """``SPEC COMMAND...``: the JSON spec ``exec_supervisor`` wrote, checked, and the
    worker command. No argparse: it costs resident memory the supervisor does not need."""
    if len(argv) < 2:
        raise UsageError("usage: python -m sidecar.supervisor SPEC_JSON COMMAND...")
    try:
        spec = json.loads(argv[0])
    except ValueError:
        raise UsageError("the spec is not JSON") from None
    if not isinstance(spec, dict):
        raise UsageError("the spec must be a JSON object")
    count, state_dir, grace_s = spec.get("count"), spec.get("state_dir"), spec.get("grace_s")
    if type(count) is not int or not 1 < count <= 64:
        raise UsageError("spec.count must be an integer between 2 and 64")
    if not isinstance(state_dir, str) or not state_dir:
        raise UsageError("spec.state_dir must be a path")
    if type(grace_s) not in (int, float) or not 0 <= grace_s < float("inf"):
        raise UsageError("spec.grace_s must be a number of seconds >= 0")
    if spec.get("log", "info") not in ("debug", "info", "warning", "error", "critical"):
        raise UsageError("spec.log must be a log level")
    return spec, argv[1:]


def main(argv: list[str] | None = None) -> int:
    """``python -m sidecar.supervisor SPEC COMMAND...``: the supervisor process (started by
    :func:`exec_supervisor`)."""
    try:
        spec, command = parse_spec(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"agent-sidecar supervisor: error: {exc}", file=sys.stderr)
        return 2
    from sidecar.logs import configure_logging

    configure_logging(str(spec.get("log", "info")))
    count, grace_s = int(spec["count"]), float(spec["grace_s"])  # type: ignore[arg-type]
    return Supervisor(command, count, Path(str(spec["state_dir"])), grace_s).run()


if __name__ == "__main__":
    sys.exit(main())
