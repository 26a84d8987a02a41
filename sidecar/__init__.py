"""agent-sidecar: an OPA-backed authorization sidecar for AI agents.

Every tool call an agent makes goes through one path: attest the caller, build the policy
input, ask Rego for a decision, enforce it, relay to the upstream, and audit. See
``docs/architecture.md``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
