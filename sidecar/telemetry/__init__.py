"""OTLP export of the sidecar's traces and metrics (the ``telemetry`` section).

Light on purpose: the configuration reads ``sidecar.telemetry.settings``, and ``semconv``
(the mapping from a call's audit record to GenAI/MCP attributes) has no OpenTelemetry import.
Only ``sidecar.telemetry.export`` imports the OpenTelemetry SDK, and only
``sidecar.app`` imports it, only when ``telemetry.endpoint`` is set.
"""
