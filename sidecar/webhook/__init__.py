"""Kubernetes mutating admission webhook: inject the sidecar, OPA and the SPIFFE socket."""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "AdmissionError",
    "InjectionResult",
    "WebhookSettings",
    "load_webhook_settings",
    "mutate",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.webhook.settings, which must not load the rest of the package.
__getattr__ = lazy_exports(
    __name__,
    {
        "AdmissionError": "inject",
        "InjectionResult": "inject",
        "mutate": "inject",
        "WebhookSettings": "settings",
        "load_webhook_settings": "settings",
    },
)
