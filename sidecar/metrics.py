"""Prometheus metrics on the admin listener (``admin.listen``, ``GET /metrics``).

Label values are bounded: ``effect`` (allow/deny/step_up), ``code`` (the registered stable
codes), ``rpc`` (CallTool/Check), ``target`` (configured targets), the policy revision (one
at a time). No argument, subject or decision id is ever a label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from sidecar.outcomes import STATUS_BY_CODE

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Live(Collector):
    """Values read when scraped: audit counts, SVID expiry, policy revision, engine stats."""

    def __init__(self, sources: dict[str, Callable[[], Any]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Any]:
        audit = self._sources.get("audit_counts", dict)()
        family = CounterMetricFamily(
            "agent_sidecar_audit_records", "Audit records, by result", labels=["result"]
        )
        for result in ("written", "dropped", "failed", "checkpoints"):
            family.add_metric([result], audit.get(result, 0))
        yield family
        sink = CounterMetricFamily(
            "agent_sidecar_audit_sink_dropped_records",
            "Audit records a sink dropped undelivered (retries exhausted or its buffer full)",
            labels=["sink"],
        )
        sink.add_metric(["http"], audit.get("http_dropped", 0))
        yield sink
        stats = self._sources.get("stats", dict)()
        yield CounterMetricFamily(
            "agent_sidecar_fail_open", "Calls allowed by fail-open", value=stats.get("fail_open", 0)
        )
        yield CounterMetricFamily(
            "agent_sidecar_shadow_disagreements",
            "Calls where the shadow policy decided differently",
            value=stats.get("shadow_disagreements", 0),
        )
        expiry = self._sources.get("svid_expires_at", lambda: None)()
        if expiry is not None:
            yield GaugeMetricFamily(
                "agent_sidecar_svid_expiry_seconds",
                "Seconds until the sidecar's X.509-SVID expires",
                value=expiry - time.time(),
            )
        available = self._sources.get("state_available", lambda: True)()
        yield GaugeMetricFamily(
            "agent_sidecar_state_available",
            "1 while the state store answers; 0 while calls needing state fail",
            value=1 if available else 0,
        )
        try:  # read from the state store: left out while it cannot answer, the rest still served
            pending = self._sources.get("pending_approvals", lambda: 0)()
        except Exception:
            log.warning("cannot count pending approvals for /metrics")
        else:
            yield GaugeMetricFamily(
                "agent_sidecar_pending_approvals",
                "Step-up approvals waiting for a human",
                value=pending,
            )
        info = InfoMetricFamily("agent_sidecar_policy", "The active policy")
        engine, revision = self._sources.get("policy", lambda: ("", ""))()
        info.add_metric([], {"engine": engine, "revision": revision})
        yield info


class Metrics:
    def __init__(self, targets: list[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._targets = set(targets)
        self.decisions = Counter(
            "agent_sidecar_decisions",
            "Calls by decision effect and code",
            ["effect", "code"],
            registry=r,
        )
        self.calls = Counter(
            "agent_sidecar_calls", "Calls by RPC and outcome code", ["rpc", "code"], registry=r
        )
        self.decision_seconds = Histogram(
            "agent_sidecar_decision_seconds",
            "Time to a policy decision",
            buckets=_BUCKETS,
            registry=r,
        )
        self.relay_seconds = Histogram(
            "agent_sidecar_relay_seconds",
            "Time to relay upstream",
            ["target"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "agent_sidecar_upstream_errors", "Upstream failures", ["target", "code"], registry=r
        )
        self._server: Any = None

    def watch(self, **sources: Callable[[], Any]) -> None:
        self.registry.register(_Live(sources))

    def observe(self, record: dict[str, Any]) -> None:
        code = record["outcome"]["code"]
        code = code if code in STATUS_BY_CODE else "internal_error"
        self.calls.labels(record["rpc"], code).inc()
        decision = record.get("decision")
        if decision:
            self.decisions.labels(decision["effect"], decision["code"]).inc()
        latency = record.get("latency_ms") or {}
        if "decide" in latency:
            self.decision_seconds.observe(latency["decide"] / 1000)
        target = (record.get("upstream") or {}).get("target")
        if target in self._targets:
            if "relay" in latency:
                self.relay_seconds.labels(target).observe(latency["relay"] / 1000)
            if code.startswith("upstream_") or code == "deadline_exceeded":
                self.upstream_errors.labels(target, code).inc()

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        self._server, _ = start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
