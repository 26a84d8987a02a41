"""agent-sidecar: an OPA-backed authorization sidecar for AI agents.

Every tool call an agent makes goes through one path: attest the caller, build the policy
input, ask Rego for a decision, enforce it, relay to the upstream, and audit. See
``docs/architecture.md``.
"""

from __future__ import annotations

# First, before anything can import grpc: the policy engine's native library must be loaded
# before grpc's, or every decision leaks memory (sidecar/policy/loadorder.py says why).
from sidecar._loadorder import preload as _preload

_preload()

__all__ = ["__version__"]

__version__ = "0.1.0"
