"""Tracing: W3C trace context always, OpenTelemetry spans when a tracer is bound.

The agent's ``traceparent`` gRPC metadata (or a new trace, when it sends none) gives every
call a trace id, recorded in the audit record, and the upstream receives a ``traceparent``
that continues the same trace. With ``telemetry.endpoint`` set, sidecar/app.py binds the
tracer of its own OTLP tracer provider (sidecar/telemetry/export.py): each call is one span
(opened by the guarded path's ``begin``, ended with the audit record), and ``attest``,
``decide``, ``approval wait`` and ``relay`` are its children. Unbound, with
``opentelemetry-api`` installed, the process's global tracer provider is used (the
historical behaviour: a provider the operator configured in-process).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

try:  # optional dependency
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    _otel = None

__all__ = ["CallSpan", "TraceContext", "Tracer", "trace_context"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass
class CallSpan:
    """The open span of one call: what its children did, ended by ``Tracer.end_call``."""

    span: Any
    children: set[str] = field(default_factory=set)
    # Monotonic and wall clock when the relay began (a relay the adapter did not trace
    # itself becomes a child span from here to the relay's recorded latency).
    relay_started: tuple[float, int] | None = None
    session: str = ""


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    parent_span_id: str | None
    flags: str = "01"
    # The call's own span, when telemetry records it: children hang below it.
    call: CallSpan | None = field(default=None, compare=False, repr=False)

    def child_header(self, span_id: str | None = None) -> str:
        """The upstream's ``traceparent``: below ``span_id`` (a relay span), else below
        the call's span when there is one, else a fresh id in the caller's trace."""
        if span_id is None and self.call is not None:
            span_id = self.parent_span_id
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


def _remote_parent(trace: TraceContext) -> Any:
    parent = trace.parent_span_id or os.urandom(8).hex()
    remote = NonRecordingSpan(
        SpanContext(
            trace_id=int(trace.trace_id, 16),
            span_id=int(parent, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(trace.flags, 16)),
        )
    )
    return _otel.set_span_in_context(remote)


def _no_global_provider() -> bool:
    """No tracer provider has been set in this process (nor named by the environment): the
    global tracer's spans are non-recording no-ops."""
    return isinstance(_otel.get_tracer_provider(), _otel.ProxyTracerProvider)


class Tracer:
    def __init__(self, otel_tracer: Any = None) -> None:
        # Unbound and given no tracer: follow the process's global provider (one set later
        # included), and skip the span entirely while there is none.
        self._follows_global = otel_tracer is None and _otel is not None
        if otel_tracer is None and _otel is not None:
            otel_tracer = _otel.get_tracer("agent-sidecar")
        self._tracer = otel_tracer
        # Bound to the sidecar's own provider: calls get their span (start_call).
        self.records_calls = False

    def bind(self, otel_tracer: Any) -> None:
        """Use the tracer of the sidecar's OTLP provider (telemetry on)."""
        self._tracer = otel_tracer
        self._follows_global = False
        self.records_calls = True

    @contextmanager
    def span(self, name: str, trace: TraceContext, **attributes: Any) -> Iterator[str | None]:
        """A child span of ``trace``; yields its span id (hex), or None without OpenTelemetry.
        Attribute keys without a namespace are put under ``agent_sidecar.``. With no provider
        anywhere, no span at all: OpenTelemetry's no-op one cost ~10 µs of CPU, three per
        call. What it yielded is kept: the caller's span id, so the upstream's
        ``traceparent`` names the caller's span as its parent (a span nobody records must not
        become the parent of the upstream's)."""
        if self._tracer is None:
            yield None
            return
        if self._follows_global and _no_global_provider():
            yield trace.parent_span_id
            return
        if trace.call is not None:
            trace.call.children.add(name)
        attributes = {(k if "." in k else f"agent_sidecar.{k}"): v for k, v in attributes.items()}
        kind = SpanKind.CLIENT if name == "relay" else SpanKind.INTERNAL
        # An exception's message and stack can carry a token, an argument or a path: never
        # recorded; the call's status comes from its outcome code only (end_call).
        with self._tracer.start_as_current_span(
            name,
            context=_remote_parent(trace),
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield format(span.get_span_context().span_id, "016x")

    def start_call(self, trace: TraceContext, start_ns: int, session: str = "") -> TraceContext:
        """Open the call's span below the caller's; the returned context parents the call's
        children (and the upstream's ``traceparent``). Unchanged unless bound."""
        if not self.records_calls or self._tracer is None:
            return trace
        # A caller's traceparent is the remote parent (its sampled flag is followed); with
        # none, the call's span is a root and the sampling ratio decides.
        parent = _remote_parent(trace) if trace.parent_span_id else _otel_context.Context()
        span = self._tracer.start_span(
            "call", context=parent, kind=SpanKind.SERVER, start_time=start_ns
        )
        context = span.get_span_context()
        flags = "01" if context.trace_flags.sampled else "00"
        return TraceContext(
            format(context.trace_id, "032x"),
            format(context.span_id, "016x"),
            flags,
            call=CallSpan(span, session=session),
        )

    def end_call(
        self, trace: TraceContext, name: str, attributes: dict[str, Any], error: str = ""
    ) -> None:
        """End the call's span with its name and attributes (from the audit record)."""
        call = trace.call
        if call is None:
            return
        span = call.span
        span.update_name(name)
        span.set_attributes(attributes)
        if error:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def relay_span(self, trace: TraceContext, relay_ms: float, **attributes: Any) -> None:
        """The relay as a child span, when the adapter that relayed made none itself."""
        call = trace.call
        if call is None or call.relay_started is None or "relay" in call.children:
            return
        _, wall_ns = call.relay_started
        attributes = {(k if "." in k else f"agent_sidecar.{k}"): v for k, v in attributes.items()}
        span = self._tracer.start_span(
            "relay",
            context=_remote_parent(trace),
            kind=SpanKind.CLIENT,
            start_time=wall_ns,
            attributes=attributes,
        )
        span.end(end_time=wall_ns + int(relay_ms * 1_000_000))

    @staticmethod
    def mark_relay(trace: TraceContext) -> None:
        if trace.call is not None and trace.call.relay_started is None:
            trace.call.relay_started = (time.perf_counter(), time.time_ns())
