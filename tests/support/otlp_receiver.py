"""A real OTLP receiver for tests: the collector's gRPC TraceService and MetricsService (the
servicers generated in ``opentelemetry-proto``) on loopback, and the OTLP/HTTP endpoint
(``POST /v1/traces``, ``/v1/metrics``, protobuf bodies) beside it.

``hold()`` makes every export wait until ``release()`` (a slow collector); ``spans()`` and
``metrics()`` flatten what arrived. ``wait_for`` polls with a generous bound, never a sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["OtlpReceiver", "ReceivedSpan", "wait_for"]

HOLD_LIMIT_S = 60  # a held export is answered anyway after this (a test that forgot)


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), within a bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        threading.Event().wait(0.05)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]
    events: tuple[str, ...] = ()  # event names (an `exception` event would carry a stack)
    status_message: str = ""


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.released = threading.Event()
        self.released.set()
        self.held = 0  # exports that arrived while held

    def gate(self) -> None:
        if not self.released.is_set():
            with self.lock:
                self.held += 1
            self.released.wait(HOLD_LIMIT_S)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    def Export(self, request: Any, context: Any) -> Any:
        self._store.gate()
        with self._store.lock:
            self._store.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    def Export(self, request: Any, context: Any) -> Any:
        self._store.gate()
        with self._store.lock:
            self._store.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _http_handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            store.gate()
            if self.path == "/v1/traces":
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                reply = trace_service_pb2.ExportTraceServiceResponse()
                with store.lock:
                    store.traces.append(request)
            elif self.path == "/v1/metrics":
                request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                reply = metrics_service_pb2.ExportMetricsServiceResponse()
                with store.lock:
                    store.metrics.append(request)
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class OtlpReceiver:
    """gRPC on ``grpc_endpoint``, HTTP on ``http_endpoint`` (both http:// on 127.0.0.1)."""

    def __init__(self) -> None:
        self._store = _Store()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self._store), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _Metrics(self._store), self._grpc
        )
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self._store))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> OtlpReceiver:
        self._grpc.start()
        self._http_thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self._grpc.stop(0)
        self._http.shutdown()
        self._http.server_close()

    def hold(self) -> None:
        self._store.released.clear()

    def release(self) -> None:
        self._store.released.set()

    @property
    def held(self) -> int:
        with self._store.lock:
            return self._store.held

    def spans(self) -> list[ReceivedSpan]:
        with self._store.lock:
            requests = list(self._store.traces)
        out = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        out.append(
                            ReceivedSpan(
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.kind,
                                {a.key: _value(a.value) for a in span.attributes},
                                span.status.code,
                                resource,
                                tuple(event.name for event in span.events),
                                span.status.message,
                            )
                        )
        return out

    def metric_points(self, name: str) -> Iterator[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of metric ``name`` received so far."""
        with self._store.lock:
            requests = list(self._store.metrics)
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name != name:
                            continue
                        data = getattr(metric, metric.WhichOneof("data"))
                        for point in data.data_points:
                            yield {a.key: _value(a.value) for a in point.attributes}, point

    def metric_names(self) -> set[str]:
        with self._store.lock:
            requests = list(self._store.metrics)
        return {
            m.name
            for r in requests
            for rm in r.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }
