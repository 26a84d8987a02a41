"""OTLP export with the official OpenTelemetry SDK: the sidecar's own tracer and meter
providers (never the process-global ones), batched, behind bounded queues.

A call only ever appends to an in-memory queue: spans to the BatchSpanProcessor's (bounded by
``telemetry.queue_size``; when full the oldest span is dropped and counted), metrics to the
SDK's aggregations (pushed by a PeriodicExportingMetricReader on its own thread). Exports run
on those threads, each bounded by ``export_timeout_s``; a batch that fails or times out is
dropped and counted (``agent_sidecar_telemetry_dropped_total``). A dead or slow collector
therefore never delays or fails a call. Imported only with telemetry on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from sidecar.telemetry.ca import read_ca
from sidecar.telemetry.headers import read_headers
from sidecar.telemetry.semconv import DURATION_BUCKETS, TOKEN_BUCKETS
from sidecar.telemetry.settings import TelemetrySettings

__all__ = ["Dropped", "Telemetry"]

log = logging.getLogger(__name__)

# Called with (signal, reason, count) whenever telemetry is dropped.
Dropped = Callable[[str, str, int], None]

# How long stopping the sidecar waits for the last export (a dead collector must not hold
# the shutdown for a whole export timeout).
SHUTDOWN_WAIT_S = 2.0
# A captured prompt or argument is cut to this many characters per attribute.
MAX_ATTRIBUTE_LENGTH = 8192


class _CountingSpanExporter(SpanExporter):
    """The OTLP exporter; a batch it could not deliver is counted as dropped."""

    def __init__(self, inner: SpanExporter, dropped: Dropped) -> None:
        self._inner = inner
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            log.warning("span export failed", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped("spans", "export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans its full queue pushes out."""

    def __init__(self, exporter: SpanExporter, dropped: Dropped, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self._dropped = dropped
        self._max_queue = kwargs["max_queue_size"]

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            queue = getattr(self._batch_processor, "_queue", None)
            if queue is not None and len(queue) >= self._max_queue:
                self._dropped("spans", "queue_full", 1)
        super().on_end(span)


class _CountingMetricExporter(MetricExporter):
    """The OTLP metric exporter; an export it could not deliver is counted as dropped."""

    def __init__(self, inner: MetricExporter, dropped: Dropped) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._dropped = dropped

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.warning("metric export failed", exc_info=True)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._dropped("metrics", "export_failed", 1)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _exporters(settings: TelemetrySettings) -> tuple[SpanExporter, MetricExporter]:
    """The OTLP span and metric exporters for ``settings`` (gRPC or HTTP/protobuf)."""
    headers = read_headers(settings.headers_file) if settings.headers_file else {}
    roots = read_ca(settings.ca_file) if settings.ca_file else None  # both protocols
    timeout = settings.export_timeout_s
    base = settings.endpoint.rstrip("/")
    if settings.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        ca = str(settings.ca_file) if settings.ca_file else None
        return (
            OTLPSpanExporter(
                endpoint=f"{base}/v1/traces", certificate_file=ca, headers=headers, timeout=timeout
            ),
            OTLPMetricExporter(
                endpoint=f"{base}/v1/metrics", certificate_file=ca, headers=headers, timeout=timeout
            ),
        )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    credentials = None
    if settings.secure:
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    common: dict[str, Any] = {
        "endpoint": base,
        "insecure": not settings.secure,
        "credentials": credentials,
        "headers": headers,
        "timeout": timeout,
    }
    return GrpcSpanExporter(**common), GrpcMetricExporter(**common)


def _sampler(settings: TelemetrySettings) -> ParentBased:
    """The ratio for new traces; a caller's (remote) sampled flag is followed only when
    trusted. Spans inside the sidecar always follow their local parent."""
    ratio = TraceIdRatioBased(settings.sampling_ratio)
    if settings.trust_caller_sampling:
        return ParentBased(ratio)
    return ParentBased(ratio, remote_parent_sampled=ratio, remote_parent_not_sampled=ratio)


class Telemetry:
    """The sidecar's OTLP tracer and meter providers, and the instruments calls feed."""

    def __init__(
        self,
        settings: TelemetrySettings,
        dropped: Dropped,
        *,
        service_instance: str = "",
    ) -> None:
        """Builds the exporters (reading the headers file, the CA): a bad one fails here,
        before the sidecar listens. Nothing is connected yet: exports start on their own."""
        self.settings = settings
        self._dropped_cb = dropped
        span_exporter, metric_exporter = _exporters(settings)
        attributes = {"service.name": "agent-sidecar", **settings.resource_attributes}
        if service_instance and "service.instance.id" not in attributes:
            attributes["service.instance.id"] = service_instance
        resource = Resource.create(attributes)
        self.tracer_provider = TracerProvider(
            resource=resource,
            sampler=_sampler(settings),
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH),
            shutdown_on_exit=False,  # stop() shuts down, bounded; no unbounded atexit flush
        )
        self.tracer_provider.add_span_processor(
            _CountingBatchSpanProcessor(
                _CountingSpanExporter(span_exporter, self._dropped),
                self._dropped,
                max_queue_size=settings.queue_size,
                max_export_batch_size=min(512, settings.queue_size),
                schedule_delay_millis=settings.batch_delay_s * 1000,
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        )
        reader = PeriodicExportingMetricReader(
            _CountingMetricExporter(metric_exporter, self._dropped),
            export_interval_millis=settings.metrics_interval_s * 1000,
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=[reader], shutdown_on_exit=False
        )
        self.tracer = self.tracer_provider.get_tracer("agent-sidecar")
        meter = self.meter_provider.get_meter("agent-sidecar")
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=[float(b) for b in TOKEN_BUCKETS],
        )
        self._calls = meter.create_counter(
            "agent_sidecar.calls", unit="{call}", description="Calls by RPC and outcome code"
        )
        self._decisions = meter.create_counter(
            "agent_sidecar.decisions",
            unit="{decision}",
            description="Calls by decision effect and code",
        )
        self._drops = meter.create_counter(
            "agent_sidecar.telemetry.dropped",
            unit="{item}",
            description="Spans and metric exports dropped rather than delay a call",
        )
        self._closed = False

    def _dropped(self, signal: str, reason: str, count: int) -> None:
        try:
            self._dropped_cb(signal, reason, count)
            self._drops.add(count, {"signal": signal, "reason": reason})
        except Exception:  # counting must never break the exporter thread
            log.exception("counting dropped telemetry failed")

    def record(self, observation: Any) -> None:
        """One call's observation (sidecar.metrics.Observation): the OTLP instruments."""
        self._calls.add(1, {"rpc": observation.rpc, "code": observation.code})
        if observation.effect:
            self._decisions.add(
                1, {"effect": observation.effect, "code": observation.decision_code}
            )
        genai = observation.genai
        if genai is None:
            return
        attributes = _present(genai.attributes)
        self._duration.record(genai.duration_s, attributes)
        for kind, count in (("input", genai.input_tokens), ("output", genai.output_tokens)):
            if isinstance(count, int) and count >= 0:
                token_attributes = {
                    k: v
                    for k, v in attributes.items()
                    if k not in ("error.type", "gen_ai.tool.name")
                }
                self._tokens.record(count, token_attributes | {"gen_ai.token.type": kind})

    def shutdown(self) -> None:
        """Flush what can be flushed within SHUTDOWN_WAIT_S, on a thread of its own: a dead
        collector never holds the sidecar's stop longer than that."""
        if self._closed:
            return
        self._closed = True

        def stop() -> None:
            for provider in (self.tracer_provider, self.meter_provider):
                try:
                    provider.shutdown()
                except Exception:
                    log.exception("telemetry shutdown failed")

        thread = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(SHUTDOWN_WAIT_S)


def _present(attributes: Mapping[str, str]) -> dict[str, str]:
    """Attributes with a value (an empty error.type means the call succeeded)."""
    return {k: v for k, v in attributes.items() if v}
