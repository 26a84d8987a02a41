"""OPA's status API (plugins/status/plugin.go ``UpdateRequestV1``; each bundle as
plugins/bundle/status.go ``Status``): every activation, download failure and rejected
revision is POSTed to ``<service>/status`` as ``{labels, bundles: {NAME: {...}}}``.

The reporter listens to the bundle poller's events (sidecar/policy/bundle/status.py); with a
policy directory instead, it watches the engine's revision (the directory is then reported
as a bundle named ``policy.dir``'s name). Reports are sent from its own thread: the newest
state wins (a report not yet delivered is replaced, never queued), retried with back-off."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.policy.bundle.status import BundleStatus, BundleStatusTracker
from sidecar.policy.export.decision_logs import MIN_RETRY_DELAY_S, rfc3339
from sidecar.policy.export.service import Poster, Service, UploadError
from sidecar.policy.export.settings import StatusSettings

__all__ = ["StatusReporter", "bundle_status_doc"]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 60.0
ERROR_CODE = "bundle_error"  # OPA's only bundle status code (plugins/bundle/status.go)


def bundle_status_doc(status: BundleStatus) -> dict[str, Any]:
    """One bundle as OPA reports it: the four times always (Go's zero time when never),
    ``code``/``message``/``errors`` only while the latest attempt failed."""
    doc: dict[str, Any] = {
        "name": status.name,
        "last_successful_download": rfc3339(status.last_successful_download_ns)
        if status.last_successful_download_ns
        else "0001-01-01T00:00:00Z",
        "last_successful_activation": rfc3339(status.last_successful_activation_ns)
        if status.last_successful_activation_ns
        else "0001-01-01T00:00:00Z",
        "last_request": rfc3339(status.last_request_ns)
        if status.last_request_ns
        else "0001-01-01T00:00:00Z",
        "last_successful_request": rfc3339(status.last_successful_request_ns)
        if status.last_successful_request_ns
        else "0001-01-01T00:00:00Z",
    }
    if status.active_revision:
        doc["active_revision"] = status.active_revision
    if status.errors:
        latest = status.errors[-1]
        doc["code"] = ERROR_CODE
        doc["message"] = latest.message
        doc["errors"] = [{"code": e.code, "message": e.message} for e in status.errors]
    return doc


class StatusReporter:
    """A :class:`~sidecar.policy.bundle.status.BundleEvents` listener that reports."""

    def __init__(
        self,
        settings: StatusSettings,
        service: Service,
        tracker: BundleStatusTracker,
        *,
        labels: Mapping[str, str],
    ) -> None:
        self._tracker = tracker
        self._labels = dict(labels)
        self._poster = Poster(service, settings.resource, settings.timeout_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dirty = True  # the first report states the starting point
        self.counts: Counter[str] = Counter()  # sent, failed
        self._watch: tuple[Callable[[], str], Callable[[], bool], str, float] | None = None
        self._thread = threading.Thread(target=self._run, name="policy-status", daemon=True)
        tracker.add_listener(self)

    def start(self) -> StatusReporter:
        self._thread.start()
        return self

    # --- BundleEvents: called on the poller's thread, never block -----------------------

    def on_download(self, name: str, ok: bool, error: str = "") -> None:
        self._changed()

    def on_activate(self, name: str, revision: str) -> None:
        self._changed()

    def on_error(self, name: str, code: str, message: str) -> None:
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        self._wake.set()

    # --- a policy directory: watch the engine's revision --------------------------------

    def watch_revision(
        self, revision: Callable[[], str], failing: Callable[[], bool], name: str, every_s: float
    ) -> None:
        """Report a directory-loaded engine: each new revision an activation, a rejected one
        an error (the active revision stays and is reported)."""
        self._watch = (revision, failing, name, every_s)
        self._tracker.on_activate(name, revision())

    def _poll_directory(self) -> None:
        if self._watch is None:
            return
        revision, failing, name, _ = self._watch
        current = self._tracker.status(name)
        now = revision()
        if now != current.active_revision:
            self._tracker.on_activate(name, now)
        elif failing() and not current.errors:
            self._tracker.on_error(
                name, "bundle_invalid", "the newest policy revision was rejected"
            )

    def document(self) -> dict[str, Any]:
        """The report as it would be sent now."""
        return {
            "labels": self._labels,
            "bundles": {s.name: bundle_status_doc(s) for s in self._tracker.all()},
        }

    def _run(self) -> None:
        retry = 0
        while not self._stop.is_set():
            if retry:
                timeout: float | None = min(MAX_RETRY_DELAY_S, MIN_RETRY_DELAY_S * 2**retry)
            else:
                timeout = self._watch[3] if self._watch else None
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._poll_directory()
            except Exception:
                log.exception("watching the policy revision failed")
            if not self._dirty:
                continue
            self._dirty = False
            try:
                body = json.dumps(self.document(), separators=(",", ":"), allow_nan=False)
                self._poster.post_json(body.encode(), gzipped=False)
            except Exception as exc:  # any failure is this round's: the thread lives on
                self.counts["failed"] += 1
                self._dirty = True
                retry = min(retry + 1, 30)
                error = str(exc) if isinstance(exc, UploadError) else type(exc).__name__
                log.warning(
                    "policy status report failed; retrying",
                    extra={"error": error, "url": self._poster.safe_url},
                )
                continue
            retry = 0
            self.counts["sent"] += 1

    def close(self, budget_s: float = 2.0) -> None:
        """Stop within ``budget_s``; a report in flight past it is abandoned (the thread is
        a daemon), never waited for."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, budget_s))
        self._poster.close()
