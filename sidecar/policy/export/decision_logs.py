"""Every decision, also as an OPA decision-log event (plugins/logs/plugin.go ``EventV1``),
batched into gzip-compressed JSON arrays POSTed to the decision-log service.

The call's path only builds the event and appends it to a bounded buffer (bytes, as OPA's
``buffer_size_limit_bytes``): it never waits on the network and never fails. Full, the
oldest events are dropped and counted (``dropped_buffer``), as OPA's size buffer does. A
thread uploads every ``min..max_delay_seconds`` (sooner once a batch's worth is buffered);
a failed upload keeps its batch and retries with exponential back-off from 100 ms up to
``max_delay_seconds`` (OPA's ``minRetryDelay`` and bound); a batch the receiver refuses for
good (a 4xx other than 408/429) is dropped and counted (``dropped_rejected``), never retried.
``upload_size_limit_bytes`` bounds the gzip-compressed body, as in OPA. Each event has its own
``decision_id``; the audit record it belongs to is its ``request_id`` (one call may make
several decisions: a list decides per entry). Non-finite numbers (Infinity, NaN) are not JSON:
they become null and their pointer is listed in ``erased``.

Closing is bounded (``close(budget_s)``): a final upload only if the thread stopped in time;
whatever is left is counted ``dropped_shutdown``, as is every event logged after close."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random  # jitter, not security
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.audit import payload_view
from sidecar.policy.export.mask import MaskRule, apply_masks
from sidecar.policy.export.service import Poster, Service, UploadError
from sidecar.policy.export.settings import DecisionLogSettings

__all__ = ["DecisionLogExporter", "rfc3339"]

log = logging.getLogger(__name__)

MIN_RETRY_DELAY_S = 0.1  # OPA's minRetryDelay
GZIP_SLACK = 64  # what gzip may add to an incompressible body (header, trailer, blocks)


def _pointer_part(key: object) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _finite(node: Any, path: str, erased: list[str]) -> Any:
    """``node`` with every non-finite float replaced by None (its pointer in ``erased``)."""
    if isinstance(node, float) and not math.isfinite(node):
        erased.append(path)
        return None
    if isinstance(node, dict):
        return {k: _finite(v, f"{path}/{_pointer_part(k)}", erased) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v, f"{path}/{i}", erased) for i, v in enumerate(node)]
    return node


def _copy(input_doc: Mapping[str, Any], result: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The event's own JSON copies of input and result (masking edits them; this also
    freezes what the call goes on to change), and the pointers of non-finite numbers."""
    doc = {"input": input_doc, "result": result}
    try:
        return json.loads(json.dumps(doc, allow_nan=False)), []
    except ValueError:
        erased: list[str] = []
        doc = _finite(doc, "", erased)
        return json.loads(json.dumps(doc, allow_nan=False)), erased


def rfc3339(time_ns: int) -> str:
    """Go's ``time.Time`` JSON form in UTC (RFC 3339 with nanoseconds, trailing zeros cut)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


class DecisionLogExporter:
    """OPA's decision-log plugin for the embedded (or any) engine's decisions."""

    def __init__(
        self,
        settings: DecisionLogSettings,
        service: Service,
        *,
        query: str,
        labels: Mapping[str, str],
        bundle: str = "",
    ) -> None:
        self._settings = settings
        self._reporting = settings.reporting
        self._path = query.removeprefix("data.").replace(".", "/")
        self._labels = dict(labels)
        self._bundle = bundle
        self._masks = tuple(MaskRule(p) for p in settings.mask)
        self._poster = Poster(service, settings.path, settings.timeout_s)
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # events, sent, dropped_buffer, dropped_oversized, encoding_failures, upload_failures
        self.counts: Counter[str] = Counter()
        self._closed = False
        self._in_flight = 0  # events taken by the thread and not yet settled
        self._thread = threading.Thread(target=self._run, name="decision-logs", daemon=True)
        self._thread.start()

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    # --- the call's path: build, encode, append; never raises, never waits ---------------

    def log(
        self,
        *,
        decision_id: str,
        input_doc: Mapping[str, Any],
        result: Mapping[str, Any],
        revision: str,
        log_level: str,
        requested_by: str = "",
        error: Mapping[str, str] | None = None,
        time_ns: int | None = None,
        request_id: str = "",
    ) -> None:
        if self._closed:  # after close nothing is sent: counted, never silently kept
            with self._lock:
                self.counts["events"] += 1
                self.counts["dropped_shutdown"] += 1
            return
        try:
            line = self._encode(
                decision_id,
                input_doc,
                result,
                revision,
                log_level,
                requested_by,
                error,
                time_ns,
                request_id,
            )
        except Exception:  # an unencodable input must never reach the call
            self.counts["encoding_failures"] += 1
            log.exception("decision-log event not encodable", extra={"decision_id": decision_id})
            return
        self._append(line)

    def _encode(
        self,
        decision_id: str,
        input_doc: Mapping[str, Any],
        result: Mapping[str, Any],
        revision: str,
        log_level: str,
        requested_by: str,
        error: Mapping[str, str] | None,
        time_ns: int | None,
        request_id: str = "",
    ) -> bytes:
        doc, non_finite = _copy(input_doc, result)
        event: dict[str, Any] = {"labels": self._labels, "decision_id": decision_id}
        if request_id:
            event["request_id"] = request_id
        if self._bundle:
            event["bundles"] = {self._bundle: {"revision": revision}}
        elif revision:
            event["revision"] = revision
        event["path"] = self._path
        event["input"] = doc["input"]
        event["result"] = doc["result"]
        if non_finite:
            event["erased"] = list(non_finite)
        self._apply_log_obligation(event, log_level)
        apply_masks(event, self._masks)
        if error is not None:
            event["error"] = dict(error)
        if requested_by:
            event["requested_by"] = requested_by
        event["timestamp"] = rfc3339(time_ns if time_ns is not None else time.time_ns())
        return json.dumps(
            event, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    @staticmethod
    def _apply_log_obligation(event: dict[str, Any], log_level: str) -> None:
        """The arguments as the audit record may show them: ``full`` as they are,
        ``redacted`` with detected secrets replaced, ``metadata`` erased (listed)."""
        action = (event.get("input") or {}).get("action")
        if not isinstance(action, dict) or "arguments" not in action or log_level == "full":
            return
        if log_level == "redacted":
            action["arguments"] = payload_view(action["arguments"], "redacted")["value"]
        else:
            del action["arguments"]
            event.setdefault("erased", []).append("/input/action/arguments")

    def _append(self, line: bytes) -> None:
        size = len(line)
        upload_limit = self._reporting.upload_size_limit_bytes
        # OPA's limit is on the compressed body: only an event over it alone, compressed,
        # can never be sent (compressing is skipped when the plain event plainly fits).
        oversized = size + 2 + GZIP_SLACK > upload_limit and (
            len(gzip.compress(b"[" + line + b"]")) > upload_limit
        )
        with self._lock:
            self.counts["events"] += 1
            if oversized:
                self.counts["dropped_oversized"] += 1
                return
            if self._closed:
                self.counts["dropped_shutdown"] += 1
                return
            limit = self._reporting.buffer_size_limit_bytes
            while self._buffer and self._buffered + size > limit:
                self._buffered -= len(self._buffer.popleft())
                self.counts["dropped_buffer"] += 1
            if size > limit:
                self.counts["dropped_buffer"] += 1
                return
            self._buffer.append(line)
            self._buffered += size
            full = self._buffered >= self._reporting.upload_size_limit_bytes
        if full:
            self._wake.set()

    # --- the upload thread ----------------------------------------------------------------

    def _take_batch(self) -> list[bytes]:
        """Events whose plain JSON array fits the upload limit (compressed it is smaller), or
        one event alone that only fits compressed."""
        limit = self._reporting.upload_size_limit_bytes - 2  # the brackets
        batch: list[bytes] = []
        size = 0
        with self._lock:
            while self._buffer and (not batch or size + len(self._buffer[0]) + len(batch) <= limit):
                line = self._buffer.popleft()
                self._buffered -= len(line)
                size += len(line)
                batch.append(line)
                if size > limit:  # the single event that fits only compressed: alone
                    break
            self._in_flight += len(batch)
        return batch

    def _body(self, batch: list[bytes]) -> bytes:
        """The gzip-compressed array; one over the limit gives its second half back."""
        while True:
            body = gzip.compress(b"[" + b",".join(batch) + b"]")
            if len(body) <= self._reporting.upload_size_limit_bytes or len(batch) == 1:
                return body
            half = len(batch) // 2
            self._settle(batch[half:], None)
            del batch[half:]

    def _settle(self, batch: list[bytes], outcome: str | None) -> None:
        """Count ``batch`` once: ``outcome`` (sent, dropped_rejected), or None to give it back
        to the front within the buffer's bound (what no longer fits is dropped and counted).
        A batch still in flight when close() gave up was counted ``dropped_shutdown`` then:
        a late answer moves it to its outcome, a give-back leaves it there."""
        with self._lock:
            self._in_flight -= len(batch)
            if self._closed:
                if outcome is not None:
                    self.counts["dropped_shutdown"] -= len(batch)
                    self.counts[outcome] += len(batch)
                return
            if outcome is not None:
                self.counts[outcome] += len(batch)
                return
            limit = self._reporting.buffer_size_limit_bytes
            for line in reversed(batch):
                if self._buffered + len(line) > limit:
                    self.counts["dropped_buffer"] += 1
                    continue
                self._buffer.appendleft(line)
                self._buffered += len(line)

    def _upload(self, deadline: float | None = None) -> bool:
        """Send everything buffered; False at the first failed POST (its batch kept) or at
        ``deadline`` (monotonic). Any exception fails this round only: the thread lives on."""
        while True:
            timeout_s = self._settings.timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - time.monotonic())
                if timeout_s < 0.05:
                    return False
            batch = self._take_batch()
            if not batch:
                return True
            try:
                self._poster.post_json(self._body(batch), gzipped=True, timeout_s=timeout_s)
            except UploadError as exc:
                if exc.rejected:
                    self._settle(batch, "dropped_rejected")
                    log.warning(
                        "decision-log batch refused by the receiver; dropped (not retried)",
                        extra={
                            "events": len(batch),
                            "error": str(exc),
                            "url": self._poster.safe_url,
                        },
                    )
                    continue
                self.counts["upload_failures"] += 1
                log.warning(
                    "decision-log upload failed; the batch is kept for a retry",
                    extra={"events": len(batch), "error": str(exc), "url": self._poster.safe_url},
                )
                self._settle(batch, None)
                return False
            except Exception:
                self.counts["upload_failures"] += 1
                log.exception(
                    "decision-log upload failed unexpectedly; the batch is kept for a retry",
                    extra={"events": len(batch), "url": self._poster.safe_url},
                )
                self._settle(batch, None)
                return False
            self._settle(batch, "sent")
            self.counts["uploads"] += 1

    def _run(self) -> None:
        retry = 0
        while not self._stop.is_set():
            if retry:
                delay = min(self._reporting.max_delay_seconds, MIN_RETRY_DELAY_S * 2 ** (retry - 1))
                delay *= random.uniform(0.8, 1.0)  # noqa: S311 (jitter)
            else:
                delay = random.uniform(  # noqa: S311 (jitter)
                    self._reporting.min_delay_seconds, self._reporting.max_delay_seconds
                )
            if retry:  # backing off: a full buffer does not cut the wait short
                self._stop.wait(delay)
            else:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            retry = 0 if self._upload() else min(retry + 1, 30)

    def close(self, budget_s: float = 2.0) -> None:
        """Stop within ``budget_s``: the thread is given what is left of it to finish its
        POST; only if it did is one last upload made (each POST's timeout what is left).
        What is not delivered then is counted ``dropped_shutdown``, never kept."""
        deadline = time.monotonic() + budget_s
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._upload(deadline)
        with self._lock:
            self._closed = True
            self.counts["dropped_shutdown"] += len(self._buffer) + self._in_flight
            self._buffer.clear()
            self._buffered = 0
        self._poster.close()
