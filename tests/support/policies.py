"""Policies made for one test: written in the bundle layout the sidecar loads."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_policy"]


def write_policy(root: Path, rego: str) -> Path:
    """Write ``rego`` as ``data.agentsidecar.authz`` under ``root``; return the policy dir
    (``policy.dir``). Writing again replaces the policy."""
    directory = root / "agentsidecar" / "authz"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "authz.rego").write_text(rego)
    return root
