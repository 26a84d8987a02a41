"""OPA's control-plane exports for the embedded engine: status reports (``policy.status``)
and decision logs (``policy.decision_logs``), in OPA's own formats, so tooling built for OPA
reads the sidecar unchanged. The audit log stays the record of truth; these are copies."""
