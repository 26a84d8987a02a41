"""The exports of one sidecar, built from ``policy.status`` / ``policy.decision_logs``: the
reporter and the exporter, the hook the decider calls with each decision, and their
``/metrics`` series. A bad service reference fails the build, before the sidecar listens.

Closing is bounded as a whole (``CLOSE_BUDGET_S``) and may run beside the rest of the
shutdown (:meth:`Exports.begin_close`): a hung receiver never delays sealing the audit log."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.policy.bundle.status import BundleStatusTracker
from sidecar.policy.export.decision_logs import DecisionLogExporter
from sidecar.policy.export.service import resolve_service
from sidecar.policy.export.settings import check_labels
from sidecar.policy.export.status import StatusReporter

__all__ = ["Exports", "build_exports"]

# Decision codes that are policy's own answer; any other is the engine failing (OPA: error).
_ANSWERS = frozenset({"ok", "policy_deny", "approval_required", "fail_open"})
# How often a directory-loaded engine's revision is looked at for the status report.
DIRECTORY_WATCH_S = 1.0
# The whole export shutdown: joining both threads and one last decision-log upload.
CLOSE_BUDGET_S = 2.0


@dataclass
class Exports:
    decision_logs: DecisionLogExporter | None = None
    status: StatusReporter | None = None
    tracker: BundleStatusTracker | None = None
    _closers: list[Callable[[float], None]] = field(default_factory=list)
    _closing: threading.Thread | None = None

    def on_decision(self, input_doc: dict[str, Any], decided: Any) -> None:
        """The decider's hook (every decision, on the call's path): enqueue only."""
        exporter = self.decision_logs
        if exporter is None:
            return
        decision = decided.decision
        error = None
        if decision.code not in _ANSWERS:
            error = {
                "code": decision.code,
                "message": decision.reasons[0] if decision.reasons else "",
            }
        # One decision, one decision_id (a list decides per entry under one call); the
        # audit record is joined on request_id, the call's id.
        exporter.log(
            decision_id=str(uuid.uuid4()),
            request_id=str(input_doc.get("request_id", "")),
            input_doc=input_doc,
            result=decision.to_dict(),
            revision=decided.revision,
            log_level=decision.obligations.log,
            requested_by=str((input_doc.get("subject") or {}).get("spiffe_id", "")),
            error=error,
        )

    @property
    def hook(self) -> Callable[[dict[str, Any], Any], None] | None:
        """What the decider calls with each decision: nothing unless decision logs are on."""
        return self.on_decision if self.decision_logs is not None else None

    def collector(self) -> Collector:
        return _ExportCollector(self)

    def close(self, budget_s: float = CLOSE_BUDGET_S) -> None:
        """Stop both exports within ``budget_s`` in all (what is left undelivered is
        counted ``dropped_shutdown``)."""
        deadline = time.monotonic() + budget_s
        closers, self._closers = self._closers, []
        for close in closers:
            close(max(0.0, deadline - time.monotonic()))

    def begin_close(self) -> None:
        """Start :meth:`close` beside the rest of the shutdown. The thread is not a daemon:
        the process waits for it, at most the close budget, so the last upload is made."""
        if self._closing is None:
            self._closing = threading.Thread(target=self.close, name="policy-exports-close")
            self._closing.start()

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        """True once a :meth:`begin_close` has finished (or none was begun)."""
        if self._closing is not None:
            self._closing.join(timeout_s)
            return not self._closing.is_alive()
        return True


def build_exports(
    policy: Any,
    *,
    revision: Callable[[], str],
    failing: Callable[[], bool],
    tracker: BundleStatusTracker | None = None,
) -> Exports:
    """``policy``: the PolicySettings. ``tracker``: the bundle poller's, when bundles are
    configured; otherwise the engine's ``revision``/``failing`` are watched."""
    exports = Exports()
    check_labels(policy.labels)
    # As OPA: the instance's id and version are always its own, whatever labels say.
    labels = {**policy.labels, "id": str(uuid.uuid4()), "version": __version__}
    bundle = getattr(policy, "bundle", None)
    bundle_name = bundle.name if bundle is not None else ""
    if policy.decision_logs is not None:
        dl = policy.decision_logs
        service = resolve_service(policy, dl.service, dl.url, "decision_logs")
        exports.decision_logs = DecisionLogExporter(
            dl, service, query=policy.query, labels=labels, bundle=bundle_name
        )
        exports._closers.append(exports.decision_logs.close)
    if policy.status is not None or tracker is not None:
        exports.tracker = tracker or BundleStatusTracker()
    if policy.status is not None:
        assert exports.tracker is not None
        st = policy.status
        service = resolve_service(policy, st.service, st.url, "status")
        reporter = StatusReporter(st, service, exports.tracker, labels=labels)
        if tracker is None:
            reporter.watch_revision(revision, failing, policy.dir.name, DIRECTORY_WATCH_S)
        exports.status = reporter.start()
        exports._closers.append(reporter.close)
    return exports


class _ExportCollector(Collector):
    """``/metrics``: the bundle's revision and errors, status reports, decision-log export."""

    def __init__(self, exports: Exports) -> None:
        self._exports = exports

    def collect(self) -> Iterator[Any]:
        tracker = self._exports.tracker
        if tracker is not None:
            info = GaugeMetricFamily(
                "agent_sidecar_policy_bundle_active",
                "1 for each bundle's active revision (the revision is a label; one at a time)",
                labels=["bundle", "revision"],
            )
            activated = GaugeMetricFamily(
                "agent_sidecar_policy_bundle_last_activation_timestamp_seconds",
                "When each bundle's active revision was activated",
                labels=["bundle"],
            )
            errors = GaugeMetricFamily(
                "agent_sidecar_policy_bundle_errors",
                "Errors since each bundle's last activation (0 while healthy)",
                labels=["bundle"],
            )
            for status in tracker.all():
                if status.active_revision:  # nothing active yet: no series
                    info.add_metric([status.name, status.active_revision], 1)
                activated.add_metric([status.name], status.last_successful_activation_ns / 1e9)
                errors.add_metric([status.name], len(status.errors))
            yield info
            yield activated
            yield errors
        status = self._exports.status
        if status is not None:
            reports = CounterMetricFamily(
                "agent_sidecar_policy_status_reports",
                "Status reports POSTed to the status service, by result",
                labels=["result"],
            )
            for result in ("sent", "failed"):
                reports.add_metric([result], status.counts.get(result, 0))
            yield reports
        exporter = self._exports.decision_logs
        if exporter is not None:
            events = CounterMetricFamily(
                "agent_sidecar_decision_logs",
                "Decision-log events, by what became of them",
                labels=["result"],
            )
            for result in (
                "events",
                "sent",
                "dropped_buffer",
                "dropped_oversized",
                "dropped_rejected",
                "dropped_shutdown",
                "encoding_failures",
            ):
                events.add_metric([result], exporter.counts.get(result, 0))
            yield events
            yield CounterMetricFamily(
                "agent_sidecar_decision_logs_upload_failures",
                "Decision-log uploads that failed (their batch kept and retried)",
                value=exporter.counts.get("upload_failures", 0),
            )
            yield GaugeMetricFamily(
                "agent_sidecar_decision_logs_buffer_bytes",
                "Encoded decision-log events waiting for upload",
                value=exporter.buffered_bytes,
            )
