"""The audit log: chain, sinks, checkpoints, and the mode (config only).

``strict``: every record is sealed and written to the file sink before the call continues; a
write that fails raises :class:`AuditError`, and the call fails closed (``audit_unavailable``).
For a call about to be relayed the pipeline first writes an ``intent`` record, so no relayed
call can be missing from the log, even if the process is killed before the call's own record
is written. A record is encoded and hashed once, and appended with one ``write`` on the
calling thread (the page cache: microseconds). With ``audit.fsync`` the call then waits for
durability by *group commit*: one syncer thread runs ``fsync`` for every record written
while the previous ``fsync`` ran, so concurrent calls share one disk flush and the event loop
never waits on the disk. A failed ``fsync`` fails the calls waiting on it and stops the log
(``alive`` false: NOT_SERVING), since what it covered may be lost.

``best_effort``: records go to a bounded in-memory queue drained by a writer thread; when it
is full the oldest is dropped and counted; calls never wait on or fail for the log. The writer
survives any one record that cannot be written (counted as dropped); should it stop anyway,
``alive`` turns false: the sidecar reports NOT_SERVING and refuses to relay.

Bounded on disk: the log rotates at ``max_bytes`` (``keep_files`` rotations kept), and the
checkpoint file rotates with it, segment for segment (``audit.log.checkpoints.N`` holds the
checkpoints of ``audit.log.N``): a checkpoint is written to the segment of the record it
signs, never starting a new one, so when retention drops a segment it drops exactly the
checkpoints whose records went with it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sidecar.audit.chain import Chain, Signer, canonical
from sidecar.audit.record import AuditError
from sidecar.audit.sinks import FileSink, HttpSink, StdoutSink

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        mode: str = "strict",
        fsync: bool = False,
        signer: Signer | None = None,
        checkpoint_every: int = 100,
        checkpoint_interval_s: float = 60.0,
        checkpoints_path: Path | None = None,
        max_bytes: int = 0,
        keep_files: int = 10,
        buffer: int = 10000,
        stdout: bool = False,
        http: HttpSink | None = None,
    ) -> None:
        self.mode = mode
        self.path = Path(path)
        self._fsync = fsync
        # The log's own file is flushed by group commit (``_sync``), not per line.
        self._file = FileSink(path, fsync=False, max_bytes=max_bytes, keep=keep_files)
        if fsync:
            self._file.before_rotate = self._file.sync  # records of a rotated file stay durable
        self._checkpoints = (
            FileSink(checkpoints_path, fsync=fsync, keep=keep_files)
            if checkpoints_path is not None
            else None
        )
        if self._checkpoints is not None and max_bytes:
            self._file.after_rotate = self._rotate_checkpoints
        self._stdout = StdoutSink() if stdout else None
        self._http = http
        if http is not None:
            http.on_dropped = self._count_http_dropped
        self.chain = Chain(
            self._file.head() or (0, "0" * 64),
            every=checkpoint_every,
            interval_s=checkpoint_interval_s,
            signer=signer,
        )
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._buffer = buffer
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._drain, name="audit-writer", daemon=True)
        self._checkpoint_wanted = threading.Event()
        self._threads = [threading.Thread(target=self._tick, name="audit-checkpoint", daemon=True)]
        if mode == "best_effort":
            self._threads.append(self._writer)
        # Group commit: futures of records written but not yet flushed, and the syncer.
        self._unsynced: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._sync_wanted = threading.Condition(self._lock)
        self._sync_failed: str = ""
        if fsync:
            self._threads.append(
                threading.Thread(target=self._sync, name="audit-sync", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    @property
    def alive(self) -> bool:
        if self._sync_failed:
            return False
        if self.strict:
            return True
        return self._writer.is_alive() and not self._stop.is_set()

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` (strict: durably, per ``audit.fsync``, before returning; the
        calling thread waits on the disk). On the event loop use :meth:`commit`."""
        if not self.strict:
            self._enqueue(record)
            return
        self._write_now(record)
        if self._fsync:
            try:
                self._file.sync()
            except AuditError:
                self._fail_sync("fsync failed")
                raise

    async def commit(self, record: dict[str, Any]) -> None:
        """Write ``record`` from the event loop. Strict: appended before this returns, and
        with ``audit.fsync`` durable (group commit) before it completes."""
        if not self.strict:
            self._enqueue(record)
            return
        if not self._fsync:
            self._write_now(record)
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._sync_failed:
                raise AuditError(f"the audit log is not durable: {self._sync_failed}")
            self._write_locked(record)
            self._unsynced.append((loop, done))
            self._sync_wanted.notify()
        await done

    def _enqueue(self, record: dict[str, Any]) -> None:
        if not self.alive:
            raise AuditError("the audit writer has stopped; no record can be written")
        with self._wake:
            if len(self._queue) >= self._buffer:
                self._queue.popleft()
                self.counts["dropped"] += 1
            self._queue.append(record)
            self._wake.notify()

    def _write_now(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._sync_failed:
                raise AuditError(f"the audit log is not durable: {self._sync_failed}")
            self._write_locked(record)

    def _write_locked(self, record: dict[str, Any]) -> None:
        prev_hash = self.chain.head[1]
        seq, hash_hex, line = self.chain.seal_line(record)
        try:
            self._file.write_line(line)
        except AuditError:
            self.counts["failed"] += 1
            raise
        self.chain.advance_to(seq, hash_hex)
        self.counts["written"] += 1
        if self._stdout is not None:
            self._stdout.write_line(line)
        if self._http is not None:
            self._http.write_record(record | {"seq": seq, "prev_hash": prev_hash, "hash": hash_hex})
        if self.chain.checkpoint_due():
            self._checkpoint_wanted.set()  # signed on the checkpoint thread, not here

    def _sync(self) -> None:
        """The group-commit loop: one ``fsync`` for every record written before it began."""
        while True:
            failure: OSError | None = None
            with self._lock:
                while not self._unsynced and not self._stop.is_set():
                    self._sync_wanted.wait(0.5)
                if not self._unsynced:
                    return
                waiting, self._unsynced = self._unsynced, []
                try:  # a rotation may close the sink's fd meanwhile: flush a copy
                    fd = os.dup(self._file.fd)
                except OSError as exc:
                    fd, failure = -1, exc
            try:
                if fd >= 0:
                    os.fsync(fd)
                    self.counts["fsyncs"] += 1
            except OSError as exc:
                failure = exc
            finally:
                if fd >= 0:
                    os.close(fd)
            error: AuditError | None = None
            if failure is not None:  # the waiting calls fail closed, and so does the log
                error = AuditError(f"{self.path}: fsync failed: {failure}")
                self._fail_sync(f"fsync failed: {failure.strerror}")
            for loop, done in waiting:
                loop.call_soon_threadsafe(_settle, done, error)

    def _fail_sync(self, why: str) -> None:
        if not self._sync_failed:
            log.critical(
                "audit log not durable: NOT_SERVING, nothing is relayed", extra={"error": why}
            )
        self._sync_failed = why

    def _rotate_checkpoints(self) -> None:
        """The log started a new segment: so does the checkpoint file. Should that fail, the
        checkpoints go on into its current file (still verified; pruned one segment late)."""
        if self._checkpoints is None:
            return
        try:
            self._checkpoints.rotate()
        except (OSError, AuditError) as exc:
            log.warning("audit checkpoint file not rotated", extra={"error": str(exc)})

    def _count_http_dropped(self, records: int) -> None:
        """The HTTP sink dropped ``records`` (``agent_sidecar_audit_sink_dropped_records``)."""
        self.counts["http_dropped"] += records

    def _checkpoint_locked(self, closing: bool = False) -> None:
        """Sign and write a checkpoint. A failure here never fails the call whose record is
        already written: the checkpoint is retried with the next record."""
        try:
            checkpoint = self.chain.checkpoint(closing=closing)
            if checkpoint is None:
                return
            line = canonical(checkpoint) + b"\n"
            self._file.write_line(line, may_rotate=False)  # in the segment of its record
            if self._checkpoints is not None:
                self._checkpoints.write_line(line)
            if self._http is not None:  # so the collector's copy verifies off the pod too
                self._http.write_record(checkpoint)
        except Exception as exc:  # no SVID yet, a full disk: try again later
            self.counts["failed"] += 1
            log.warning("audit checkpoint not written yet", extra={"error": str(exc)})
            return
        self.chain.checkpointed(checkpoint)
        self.counts["checkpoints"] += 1

    def checkpoint(self, *, closing: bool = False) -> None:
        with self._lock:
            self._checkpoint_locked(closing)

    def _tick(self) -> None:
        while not self._stop.is_set():
            self._checkpoint_wanted.wait(1.0)
            self._checkpoint_wanted.clear()
            if self.chain.checkpoint_due():
                self.checkpoint()

    def _drain(self) -> None:
        try:
            self._drain_queue()
        finally:
            if not self._stop.is_set():
                log.critical("the audit writer stopped: NOT_SERVING, nothing is relayed")

    def _drain_queue(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait(0.5)
                if not self._queue and self._stop.is_set():
                    return
                record = self._queue.popleft()
            try:
                self._write_now(record)
                if self._fsync and not self._queue:  # one flush per burst of records
                    self._file.sync()
            except Exception as exc:  # the writer must outlive any one record
                self.counts["dropped"] += 1
                log.error(
                    "audit record could not be written (best_effort: dropped)",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )

    def close(self) -> None:
        self._stop.set()
        self._checkpoint_wanted.set()
        with self._wake:
            self._wake.notify_all()
        with self._lock:
            self._sync_wanted.notify_all()
        for thread in self._threads:
            thread.join(10)
        self.checkpoint(closing=True)  # a clean shutdown seals the log, and says it stopped
        if self._http is not None:
            self._http.close()
        self._file.close()
        if self._checkpoints is not None:
            self._checkpoints.close()


def _settle(done: asyncio.Future[None], error: AuditError | None) -> None:
    if done.done():  # the call was cancelled meanwhile
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
