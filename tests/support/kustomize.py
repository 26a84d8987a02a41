"""The manifests as the API server would receive them: ``kubectl kustomize`` of an overlay."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["HAVE_KUBECTL", "ROOT", "build", "find"]

ROOT = Path(__file__).resolve().parents[2]
HAVE_KUBECTL = shutil.which("kubectl") is not None


@cache
def _rendered(overlay: str) -> str:
    return subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def build(overlay: str) -> list[dict[str, Any]]:
    """Every object of ``k8s/overlays/OVERLAY``, rendered (a fresh copy per call)."""
    return [doc for doc in yaml.safe_load_all(_rendered(overlay)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (an AssertionError if not exactly one)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]
