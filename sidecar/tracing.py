"""Tracing: W3C trace context always, OpenTelemetry spans when it is installed (optional).

The agent's ``traceparent`` gRPC metadata (or a new trace, when it sends none) gives every
call a trace id, recorded in the audit record, and the upstream receives a ``traceparent``
that continues the same trace. With ``opentelemetry-api`` installed and a tracer provider
configured by the operator, ``attest``, ``decide`` and ``relay`` are spans of that trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

try:  # optional dependency
    from opentelemetry import trace as _otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    _otel = None

__all__ = ["TraceContext", "Tracer", "trace_context"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    parent_span_id: str | None
    flags: str = "01"

    def child_header(self, span_id: str | None = None) -> str:
        return f"00-{self.trace_id}-{span_id or os.urandom(8).hex()}-{self.flags}"


def trace_context(metadata: Sequence[tuple[str, str | bytes]]) -> TraceContext:
    """The caller's trace (a valid ``traceparent``), or a new one."""
    for key, value in metadata:
        if key.lower() == "traceparent":
            text = value.decode() if isinstance(value, bytes) else value
            match = _TRACEPARENT.match(text.strip())
            if match and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}:
                return TraceContext(match.group(1), match.group(2), match.group(3))
    return TraceContext(os.urandom(16).hex(), None)


class Tracer:
    def __init__(self) -> None:
        self._tracer = _otel.get_tracer("agent-sidecar") if _otel is not None else None

    @contextmanager
    def span(self, name: str, trace: TraceContext, **attributes: Any) -> Iterator[str | None]:
        """A span of ``trace``; yields its span id (hex), or None without OpenTelemetry."""
        if self._tracer is None:
            yield None
            return
        parent = trace.parent_span_id or os.urandom(8).hex()
        remote = NonRecordingSpan(
            SpanContext(
                trace_id=int(trace.trace_id, 16),
                span_id=int(parent, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(trace.flags, 16)),
            )
        )
        context = _otel.set_span_in_context(remote)
        with self._tracer.start_as_current_span(
            name, context=context, attributes=attributes
        ) as span:
            yield format(span.get_span_context().span_id, "016x")
