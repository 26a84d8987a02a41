"""The root of every exception agent-sidecar raises.

Each subpackage has its own ``errors.py``; this module draws the whole tree once::

    SidecarError
    ├── ConfigError                      sidecar.config: bad file, unknown key, wrong type
    ├── PolicyError                      sidecar.policy.errors
    │   ├── PolicyLoadError              a policy directory that cannot be loaded or compiled
    │   │   └── UnsupportedBuiltinError  Rego calls a built-in the embedded engine lacks
    │   └── DecisionError                no enforceable decision (carries a stable ``code``)
    ├── RelayError                       sidecar.relay.errors (carries ``code``)
    │   ├── RequestBuildError            arguments that cannot form the configured request
    │   ├── UpstreamUnavailable          connection refused, reset, TLS failure
    │   ├── UpstreamTimeout              the upstream did not answer in time
    │   ├── UpstreamResponseTooLarge     the answer exceeds relay.max_response_bytes
    │   └── UpstreamStatusError          the upstream answered with a non-2xx status
    ├── AuditError                       sidecar.audit: a record could not be written
    └── IdentityError                    sidecar.identity.errors: no attested subject

Errors from libraries (requests, regopy, yaml, grpc) are translated once, at the edge of the
module that calls them (``raise ... from exc``), so callers only ever catch these.
"""

from __future__ import annotations

__all__ = ["SidecarError"]


class SidecarError(Exception):
    """Base class of all agent-sidecar errors."""
