"""Prometheus metrics on the admin listener (``admin.listen``, ``GET /metrics``).

Label values are bounded: ``effect`` (allow/deny/step_up), ``code`` (the registered stable
codes), ``rpc`` (CallTool/Check), ``target`` (configured targets), the policy revision (one
at a time). No argument, subject or decision id is ever a label.

The GenAI client metrics of the OpenTelemetry semantic conventions are here too, in
Prometheus' spelling (``gen_ai_client_operation_duration_seconds``,
``gen_ai_client_token_usage``): their tool and model names pass a
:class:`~sidecar.telemetry.semconv.LabelGuard` (configured, or resolved by the sidecar, at most
a bounded number; every other name is ``_other``). With telemetry on, the same observations
reach the OTLP exporter through a sink (``add_sink``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from sidecar.outcomes import STATUS_BY_CODE
from sidecar.telemetry.semconv import (
    DURATION_BUCKETS,
    ERROR_TYPE,
    OPERATION,
    PROVIDER,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    TOKEN_BUCKETS,
    TOOL_NAME,
    LabelGuard,
    Measurement,
    measure,
)

__all__ = ["Metrics", "Observation", "Sink"]

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
        yield GaugeMetricFamily(
            "agent_sidecar_audit_writer_up",
            "1 while the audit log takes records; 0 once its writer stopped (NOT_SERVING)",
            value=1 if audit.get("alive", True) else 0,
        )
        reloader = self._sources.get("policy_reload", lambda: None)()  # None: engine opa
        yield CounterMetricFamily(
            "agent_sidecar_policy_reloads",
            "Policy revisions loaded by hot reload",
            value=getattr(reloader, "reloads", 0),
        )
        yield CounterMetricFamily(
            "agent_sidecar_policy_reload_failures",
            "Policy revisions rejected by hot reload (counted once per bad revision)",
            value=getattr(reloader, "rejections", 0),
        )
        yield GaugeMetricFamily(
            "agent_sidecar_policy_reload_failing",
            "1 while the newest policy revision on disk is rejected; the active one stays",
            value=1 if getattr(reloader, "failing", False) else 0,
        )
        available = self._sources.get("state_available", lambda: True)()
        yield GaugeMetricFamily(
            "agent_sidecar_state_available",
            "1 while the state store answers; 0 while calls needing state fail",
            value=1 if available else 0,
        )
        try:  # read from the state store: left out while it cannot answer, the rest still served
            pending = self._sources.get("pending_approvals", lambda: 0)()
            oldest = self._sources.get("oldest_pending_age", lambda: 0.0)()
        except Exception:
            log.warning("cannot count pending approvals for /metrics")
        else:
            yield GaugeMetricFamily(
                "agent_sidecar_pending_approvals",
                "Step-up approvals waiting for a human",
                value=pending,
            )
            yield GaugeMetricFamily(
                "agent_sidecar_oldest_pending_approval_age_seconds",
                "Age of the oldest step-up approval still waiting (0 when none)",
                value=oldest,
            )
        info = InfoMetricFamily("agent_sidecar_policy", "The active policy")
        engine, revision = self._sources.get("policy", lambda: ("", ""))()
        info.add_metric([], {"engine": engine, "revision": revision})
        yield info


# The GenAI metric attributes, as Prometheus label names (dots become underscores).
_GENAI_LABELS = (OPERATION, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, TOOL_NAME, ERROR_TYPE)
_TOKEN_LABELS = (OPERATION, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, "gen_ai.token.type")
# Names beyond the configured ones that may become label values (each label, per process).
NAME_CAP = 100


@dataclass(frozen=True)
class Observation:
    """One finished call as the metrics see it, bounded labels only."""

    rpc: str
    code: str
    effect: str
    decision_code: str
    genai: Measurement | None


Sink = Callable[[Observation], None]


def _prom(name: str) -> str:
    return name.replace(".", "_")


class Metrics:
    def __init__(
        self,
        targets: list[str],
        *,
        tools: Iterable[str] = (),
        models: Iterable[str] = (),
        providers: Mapping[str, str] | None = None,
    ) -> None:
        """``tools``, ``models``: configured names (always their own label value);
        ``providers``: configured provider name -> type (gen_ai.provider.name)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self._targets = set(targets)
        self._tool_names = LabelGuard(frozenset(tools), NAME_CAP)
        self._model_names = LabelGuard(frozenset(models), NAME_CAP)
        self.providers: Mapping[str, str] = dict(providers or {})
        self._sinks: list[Sink] = []
        self._closers: list[Callable[[], None]] = []
        self.genai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration)",
            [_prom(n) for n in _GENAI_LABELS],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.genai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used, by token type (OpenTelemetry gen_ai.client.token.usage)",
            [_prom(n) for n in _TOKEN_LABELS],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "agent_sidecar_telemetry_dropped",
            "Spans and metric exports dropped rather than delay a call (queue full, export "
            "failed or timed out)",
            ["signal", "reason"],
            registry=r,
        )
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
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)
        self._server: Any = None

    def watch(self, **sources: Callable[[], Any]) -> None:
        self.registry.register(_Live(sources))

    def add_sink(self, sink: Sink, close: Callable[[], None] | None = None) -> None:
        """Also hand each call's observation to ``sink`` (the OTLP exporter); ``close``
        runs when the metrics close."""
        self._sinks.append(sink)
        if close is not None:
            self._closers.append(close)

    def dropped(self, signal: str, reason: str, count: int = 1) -> None:
        """Telemetry dropped by the exporter (called from its threads)."""
        self.telemetry_dropped.labels(signal, reason).inc(count)

    def observe(self, record: dict[str, Any]) -> None:
        code = record["outcome"]["code"]
        code = code if code in STATUS_BY_CODE else "internal_error"
        self.calls.labels(record["rpc"], code).inc()
        decision = record.get("decision")
        if decision:
            self.decisions.labels(decision["effect"], decision["code"]).inc()
        genai = measure(record, self.providers, self._tool_names, self._model_names)
        if genai is not None:
            self._observe_genai(genai)
        observation = Observation(
            record["rpc"],
            code,
            decision["effect"] if decision else "",
            decision["code"] if decision else "",
            genai,
        )
        for sink in self._sinks:
            try:
                sink(observation)
            except Exception:
                log.exception("telemetry sink failed")
        latency = record.get("latency_ms") or {}
        if "decide" in latency:
            self.decision_seconds.observe(latency["decide"] / 1000)
        target = (record.get("upstream") or {}).get("target")
        if target in self._targets:
            if "relay" in latency:
                self.relay_seconds.labels(target).observe(latency["relay"] / 1000)
            if code.startswith("upstream_") or code == "deadline_exceeded":
                self.upstream_errors.labels(target, code).inc()

    def _observe_genai(self, m: Measurement) -> None:
        a = m.attributes
        self.genai_duration.labels(*(a.get(n, "") for n in _GENAI_LABELS)).observe(m.duration_s)
        for kind, count in (("input", m.input_tokens), ("output", m.output_tokens)):
            if isinstance(count, int) and count >= 0:
                labels = [a.get(n, "") for n in _TOKEN_LABELS[:-1]] + [kind]
                self.genai_tokens.labels(*labels).observe(count)

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        self._server, _ = start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )
        return self._server.server_address[1]

    def close(self) -> None:
        self.gc_pauses.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing a telemetry sink failed")


GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GcPauses(Collector):
    """Every garbage collection's pause, by generation, as the histogram
    ``agent_sidecar_gc_pause_seconds``. The collector runs in whichever thread allocates, the
    event loop's included, so a long collection stalls every call meanwhile: the pod-mode
    tail's cause (docs/performance.md). The hook takes no lock (a collection can start while
    any lock is held, prometheus_client's included): it swaps in a new tuple per generation,
    read whole at scrape time. It holds its owner weakly: one never closed stops observing
    once it is gone, and is unregistered by the next one made."""

    def __init__(self) -> None:
        self._started = 0.0
        # generation -> (cumulative count per bucket, +Inf included; sum of seconds)
        self._rows: dict[str, tuple[tuple[int, ...], float]] = {}
        ref = weakref.ref(self)

        def callback(phase: str, info: dict[str, Any]) -> None:
            pauses = ref()
            if pauses is not None:
                pauses._observe(phase, info)

        callback.owner = ref  # type: ignore[attr-defined]
        self._callback = callback
        gc.callbacks[:] = [c for c in gc.callbacks if getattr(c, "owner", _alive)() is not None]
        gc.callbacks.append(callback)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = str(info.get("generation", ""))
        counts, total = self._rows.get(generation, ((0,) * (len(GC_BUCKETS) + 1), 0.0))
        self._rows[generation] = (
            tuple(
                n + (1 if i == len(GC_BUCKETS) or pause <= GC_BUCKETS[i] else 0)
                for i, n in enumerate(counts)
            ),
            total + pause,
        )

    def collect(self) -> Iterator[Any]:
        family = HistogramMetricFamily(
            "agent_sidecar_gc_pause_seconds",
            "Garbage collections by generation: each pauses the thread it runs in, the event "
            "loop's included",
            labels=["generation"],
        )
        for generation, (counts, total) in sorted(dict(self._rows).items()):
            bounds = [str(b) for b in GC_BUCKETS] + ["+Inf"]
            family.add_metric([generation], list(zip(bounds, counts, strict=True)), total)
        yield family

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


def _alive() -> bool:
    return True
