"""What watches the guarded path: its Prometheus metrics and, with ``telemetry.endpoint``
set, OTLP export of its spans and metrics (sidecar/telemetry/export.py). Off, the
OpenTelemetry SDK is not even imported."""

from __future__ import annotations

import logging

from sidecar.calls.guarded import GuardedPath, SpanOptions
from sidecar.config import ConfigError, Settings
from sidecar.metrics import Metrics

__all__ = ["build_observers"]

log = logging.getLogger(__name__)

WORKERS_WARNING = (
    "server.workers is %d and admin.listen is set: GET /metrics serves worker 0's series "
    "only, so call counters and histograms cover about 1/%d of the calls; use OTLP export "
    "(telemetry.endpoint: every worker exports) or server.workers: 1 for complete metrics "
    "(docs/observability.md)"
)


def build_observers(settings: Settings, path: GuardedPath, workers: int = 1) -> Metrics:
    """The path's metrics (bounded GenAI labels: configured tools, models, providers) and its
    OTLP exporter, bound to the path's tracer; a bad headers file or CA fails here, before
    the sidecar listens. Closing the metrics shuts the exporter down. ``workers``: how many
    processes serve (the role's count: what ``serve`` really started, cgroup honoured)."""
    providers = {name: p.type for name, p in settings.providers.items()}
    # Provider models are configured names too (gen_ai.response.model): they never use up
    # the bound on resolved names.
    models = {*settings.models, *(m.model for m in settings.models.values() if m.model)}
    metrics = Metrics(
        list(settings.targets), tools=settings.tools, models=models, providers=providers
    )
    path.metrics = metrics
    if settings.admin.listen and workers > 1:
        log.warning(WORKERS_WARNING, workers, workers)
    if not settings.telemetry.enabled:
        return metrics
    from sidecar.telemetry.ca import CaFileError
    from sidecar.telemetry.headers import HeadersError

    try:
        from sidecar.telemetry.export import Telemetry
    except ImportError as exc:  # a stripped install: say so rather than a traceback
        raise ConfigError(f"telemetry: the OpenTelemetry SDK cannot be imported: {exc}") from None

    try:
        telemetry = Telemetry(settings.telemetry, metrics.dropped)
    except (HeadersError, CaFileError, OSError) as exc:
        raise ConfigError(f"telemetry: {exc}") from None
    path.tracer.bind(telemetry.tracer)
    path.span_options = SpanOptions(providers, settings.telemetry.capture_content)
    metrics.add_sink(telemetry.record, close=telemetry.shutdown)
    return metrics
