"""agent-sidecar: an OPA-backed authorization sidecar for AI agents.

Every tool call an agent makes goes through one path: attest the caller, build the policy
input, ask Rego for a decision, enforce it, relay to the upstream, and audit. See
``docs/architecture.md``.
"""

from __future__ import annotations

import os as _os

# First, before anything can import grpc: the policy engine's native library must be loaded
# before grpc's, or every decision leaks memory (sidecar/_loadorder.py says why). Skipped
# only in the supervisor of ``server.workers``: it evaluates nothing and loads no grpc, and
# the library costs 14 MB resident. sidecar/supervisor.py sets the variable to its own pid
# (``exec`` keeps it), so a value set anywhere else (a pod's env) skips nothing. Were
# anything there to build an engine after grpc, the engine would refuse to start.
if _os.environ.get("AGENT_SIDECAR_SUPERVISE") != str(_os.getpid()):
    from sidecar._loadorder import preload as _preload

    _preload()

__all__ = ["__version__"]

__version__ = "0.1.0"
