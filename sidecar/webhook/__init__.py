"""Kubernetes mutating admission webhook: inject the sidecar, OPA and the SPIFFE socket."""

from __future__ import annotations

from sidecar.webhook.inject import AdmissionError, InjectionResult, mutate
from sidecar.webhook.settings import WebhookSettings, load_webhook_settings

__all__ = [
    "AdmissionError",
    "InjectionResult",
    "WebhookSettings",
    "load_webhook_settings",
    "mutate",
]
