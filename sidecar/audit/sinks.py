"""Where sealed audit lines go.

``FileSink``: JSON lines appended with one unbuffered ``write`` (``O_APPEND``, mode 0600),
optionally fsynced; a write that fails part-way is cut back, so no torn line is left;
rotated by size (``audit.log`` -> ``audit.log.1`` ...), the chain
continuing across files; a companion file (the checkpoint copy) rotates with it, so the
retention that drops a segment drops the companion's segment too. ``StdoutSink``.
``HttpSink``: batched POSTs to a collector in OPA's decision-log event format, retried with
backoff, off the call path; what cannot be delivered is counted as dropped (and reported
through ``on_dropped``, for ``/metrics``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.audit.chain import canonical
from sidecar.audit.record import AuditError

__all__ = ["FileSink", "HttpSink", "StdoutSink", "rotated_files"]

log = logging.getLogger(__name__)


def rotated_files(path: Path) -> list[Path]:
    """``path`` and its rotations (``path.N``), oldest first. Only ``path`` + ``.`` + digits
    is a rotation: ``audit.log.checkpoints.1`` is the checkpoint file's, not the log's."""
    if not path.parent.is_dir():
        return []
    start = len(path.name) + 1
    rotations = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.name[start:].isdigit()),
        key=lambda p: int(p.name[start:]),
        reverse=True,
    )
    return [*rotations, path] if path.exists() else rotations


class FileSink:
    def __init__(self, path: str | Path, *, fsync: bool, max_bytes: int = 0, keep: int = 10):
        self.path = Path(path)
        self._fsync = fsync
        self._max_bytes = max_bytes
        self._keep = keep
        self._fd = -1
        self.before_rotate: Callable[[], None] | None = None
        # Called once the file has rotated: its companion (the checkpoint copy) rotates too.
        self.after_rotate: Callable[[], None] | None = None
        self._open()

    @property
    def fd(self) -> int:
        return self._fd

    def sync(self) -> None:
        """Flush what is written to the disk."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"{self.path}: fsync failed: {exc}") from exc

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
            self._cut_torn_tail()
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open audit log: {exc.strerror}") from exc

    def _cut_torn_tail(self) -> None:
        """A process killed mid-write (SIGKILL stops a large write between pages) leaves part
        of a line at the end: cut it, or the next record would continue that line."""
        end = self._size
        position = end
        while position > 0:
            start = max(0, position - 65536)
            chunk = os.pread(self._fd, position - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        if position < end:
            os.ftruncate(self._fd, position)
            self._size = position
            log.warning(
                "cut the incomplete last line a killed process left in the audit log",
                extra={"path": str(self.path), "bytes": end - position},
            )

    def head(self) -> tuple[int, str] | None:
        """The last record's (seq, hash), so a restarted sidecar continues the chain."""
        for path in reversed(rotated_files(self.path)):
            if not path.is_file():
                continue  # e.g. /dev/full in tests: nothing to continue from
            try:
                # "\n" only: a record holding U+2028 or U+0085 (an upstream's text) is one
                # line; str.splitlines() would cut it and continue from an older head.
                lines = path.read_text(encoding="utf-8").split("\n")
            except (OSError, UnicodeDecodeError):
                continue
            for line in reversed(lines):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # a torn last line (killed mid-write) is skipped
                if (
                    isinstance(doc, dict)
                    and "seq" in doc
                    and "hash" in doc
                    and (doc.get("type") != "checkpoint")
                ):
                    return int(doc["seq"]), str(doc["hash"])
        return None

    def write_line(self, line: bytes, *, may_rotate: bool = True) -> None:
        """Append ``line``. ``may_rotate=False`` keeps it in the current file even past
        ``max_bytes`` (a checkpoint stays in the segment of the record it signs)."""
        if (
            may_rotate
            and self._max_bytes
            and self._size
            and self._size + len(line) > self._max_bytes
        ):
            try:
                self._rotate()
            except OSError as exc:  # the record is not written: the call fails closed
                raise AuditError(f"{self.path}: cannot rotate the audit log: {exc}") from exc
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._cut_torn_write()
            raise AuditError(f"{self.path}: cannot write audit record: {exc}") from exc
        self._size += len(line)

    def _cut_torn_write(self) -> None:
        """A failed write (a full disk) may have appended part of the line: cut the file back
        to its last complete record, so the next record starts on a line of its own."""
        try:
            if os.fstat(self._fd).st_size > self._size:
                os.ftruncate(self._fd, self._size)
        except OSError as exc:  # nothing more can be done; verify names the torn line
            log.error("could not cut a torn audit line", extra={"error": str(exc)})

    def rotate(self) -> None:
        """Start a new file now (``path`` -> ``path.1`` ..., ``keep`` rotations kept)."""
        self._rotate()

    def _rotate(self) -> None:
        if self.before_rotate is not None:
            self.before_rotate()
        os.close(self._fd)
        self._fd = -1
        try:
            for n in range(self._keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        finally:  # renamed or not, the sink writes to ``path`` again, never to a closed fd
            self._open()
        if self.after_rotate is not None:
            self.after_rotate()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StdoutSink:
    def write_line(self, line: bytes) -> None:
        sys.stdout.write(line.decode("utf-8"))
        sys.stdout.flush()

    def close(self) -> None:
        pass


class HttpSink:
    """Batched, retried delivery to a decision-log collector; never blocks a call."""

    def __init__(
        self,
        url: str,
        *,
        batch: int = 100,
        interval_s: float = 2.0,
        buffer: int = 10000,
        retries: int = 3,
        query: str = "",
    ) -> None:
        self._url = url
        self._batch = batch
        self._interval_s = interval_s
        self._retries = retries
        self._path = query.removeprefix("data.").replace(".", "/")
        self._queue: deque[dict[str, Any]] = deque()
        self._buffer = buffer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.delivered = 0
        self.dropped = 0
        # Told how many records were just dropped (under the sink's lock, so never
        # concurrently): the audit log counts them for ``/metrics``.
        self.on_dropped: Callable[[int], None] | None = None
        import requests  # here, not at import: only a configured sink or webhook loads it

        self._requests = requests
        self._session = requests.Session()
        self._session.trust_env = False
        self._thread = threading.Thread(target=self._run, name="audit-http", daemon=True)
        self._thread.start()

    def write_record(self, record: dict[str, Any]) -> None:
        # Frozen now, as hashed: the caller goes on to fill the same dicts (the intent's
        # ``upstream`` becomes the call's), and the batch is encoded later, on another thread.
        record = json.loads(canonical(record))
        event = {
            "decision_id": record.get("decision_id"),
            "path": self._path,
            "input": record.get("input"),
            "result": record.get("decision"),
            "timestamp": record.get("time"),
            "labels": {"app": "agent-sidecar"},
            "requested_by": (record.get("subject") or {}).get("spiffe_id", ""),
            "agent_sidecar": record,
        }
        with self._lock:
            if len(self._queue) >= self._buffer:
                self._queue.popleft()
                self._count_dropped(1)
            self._queue.append(event)
            if len(self._queue) >= self._batch:
                self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            if not batch:
                return
            delay = 0.2
            for attempt in range(self._retries):
                try:
                    response = self._session.post(self._url, json=batch, timeout=5)
                    if 200 <= response.status_code < 300:
                        self.delivered += len(batch)
                        break
                except self._requests.RequestException:
                    pass
                if attempt + 1 < self._retries:
                    time.sleep(delay)
                    delay *= 2
            else:
                with self._lock:
                    self._count_dropped(len(batch))
                log.error(
                    "audit collector unreachable; batch dropped", extra={"records": len(batch)}
                )

    def _count_dropped(self, records: int) -> None:
        """Count ``records`` dropped (the caller holds ``_lock``)."""
        self.dropped += records
        if self.on_dropped is not None:
            self.on_dropped(records)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._flush()
