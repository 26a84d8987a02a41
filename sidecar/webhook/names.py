"""The names of what the injector adds to a pod (containers, volumes, mount paths), and which
of its volumes only the sidecar container may mount: one place for the injector, its
collision checks and the tests."""

from __future__ import annotations

from sidecar.webhook.opa import VOL_OPA, VOL_OPA_SOCKET

__all__ = [
    "CREDENTIAL_VOLUMES",
    "EGRESS_LOCK",
    "OPA",
    "OUR_VOLUMES",
    "SIDECAR",
    "SPIFFE_DIR",
    "SPIFFE_SOCKET",
    "STATE_DSN_DIR",
    "TELEMETRY_DIR",
    "VOL_CONFIG",
    "VOL_POLICY",
    "VOL_SOCKET",
    "VOL_SPIFFE",
    "VOL_STATE",
    "VOL_STATE_DSN",
    "VOL_TELEMETRY",
]

SIDECAR = "agent-sidecar"
OPA = "opa"
EGRESS_LOCK = "agent-sidecar-egress-lock"
VOL_CONFIG = "agent-sidecar-config"
VOL_POLICY = "agent-sidecar-policy"
VOL_SPIFFE = "agent-sidecar-spiffe"
VOL_STATE = "agent-sidecar-state"
VOL_SOCKET = "agent-sidecar-socket"
SPIFFE_DIR = "/spiffe-workload-api"
SPIFFE_SOCKET = f"unix://{SPIFFE_DIR}/spire-agent.sock"
VOL_STATE_DSN = "agent-sidecar-state-dsn"
STATE_DSN_DIR = "/etc/agent-sidecar/state-dsn"
VOL_TELEMETRY = "agent-sidecar-telemetry"
TELEMETRY_DIR = "/etc/agent-sidecar/telemetry"
# A bundle server's bearer token (sidecar only), its CA and the bundle signing key.
VOL_BUNDLE_TOKEN = "agent-sidecar-bundle-token"  # noqa: S105 (a volume name)
BUNDLE_VOLUMES = (VOL_BUNDLE_TOKEN, "agent-sidecar-bundle-ca", "agent-sidecar-bundle-key")
OUR_VOLUMES = frozenset(
    {
        VOL_CONFIG,
        VOL_POLICY,
        VOL_SPIFFE,
        VOL_STATE,
        VOL_OPA,
        VOL_OPA_SOCKET,
        VOL_SOCKET,
        VOL_STATE_DSN,
        VOL_TELEMETRY,
        *BUNDLE_VOLUMES,
    }
)
# What only the sidecar container may mount (the admission policy's credentialVolumes too):
# the SVID socket, its state, the fleet store's DSN, the collector's headers (an API key),
# and OPA's unauthenticated API.
CREDENTIAL_VOLUMES = frozenset(
    {VOL_SPIFFE, VOL_STATE, VOL_STATE_DSN, VOL_TELEMETRY, VOL_OPA_SOCKET, VOL_BUNDLE_TOKEN}
)
