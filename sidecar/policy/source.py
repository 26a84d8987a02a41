"""A policy directory on disk: Rego modules, data documents and the revision they make.

Layout follows OPA's bundle convention, so ``opa test DIR`` and ``opa run -s DIR`` see the same
documents: every ``*.rego`` file is a module; a ``data.json`` file's directory (relative to the
root) is the path it is mounted at (``rego/agentsidecar/data.json`` -> ``data.agentsidecar``).
Test modules (``*_test.rego``) are loaded for ``policy test`` only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.policy.compat import RegoModule
from sidecar.policy.errors import PolicyLoadError

__all__ = ["PolicySource", "load_policy_dir"]

_SKIP_DIRS = {".git", "__pycache__", "schemas"}


@dataclass(frozen=True)
class PolicySource:
    """Everything needed to compile a policy, and its content hash (``revision``)."""

    root: Path
    modules: tuple[RegoModule, ...]
    data: Mapping[str, Any]
    revision: str


def load_policy_dir(root: str | Path, *, include_tests: bool = False) -> PolicySource:
    """Read a policy directory. Raises :class:`PolicyLoadError` naming the offending file."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyLoadError(f"{root}: policy directory not found")
    digest = hashlib.sha256()
    modules: list[RegoModule] = []
    data: dict[str, Any] = {}
    for path in sorted(_walk(root)):
        rel = path.relative_to(root).as_posix()
        is_test = path.name.endswith("_test.rego")
        if path.suffix == ".rego":
            if is_test and not include_tests:
                continue
            text = _read(path)
            modules.append(RegoModule(path=str(path), source=text))
        elif path.name == "data.json":
            text = _read(path)
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PolicyLoadError(f"{path}: not valid JSON: {exc}") from exc
            if not isinstance(doc, dict):
                raise PolicyLoadError(f"{path}: a data document must be a JSON object")
            prefix = [p for p in Path(rel).parent.parts if p]
            _merge(data, _nest(prefix, doc), str(path), [])
        else:
            continue
        if not is_test:
            digest.update(rel.encode() + b"\0" + text.encode() + b"\0")
    if not any(not m.path.endswith("_test.rego") for m in modules):
        raise PolicyLoadError(f"{root}: no Rego policy files (*.rego) found")
    return PolicySource(
        root=root, modules=tuple(modules), data=data, revision=digest.hexdigest()[:32]
    )


def _walk(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not (_SKIP_DIRS & set(path.relative_to(root).parts[:-1])):
            yield path


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{path}: cannot read: {exc}") from exc


def _nest(prefix: list[str], doc: dict[str, Any]) -> dict[str, Any]:
    for part in reversed(prefix):
        doc = {part: doc}
    return doc


def _merge(into: dict[str, Any], doc: dict[str, Any], file: str, at: list[str]) -> None:
    for key, value in doc.items():
        if key in into:
            if isinstance(into[key], dict) and isinstance(value, dict):
                _merge(into[key], value, file, [*at, key])
                continue
            where = ".".join(["data", *at, key])
            raise PolicyLoadError(f"{file}: {where} is already defined by another data file")
        into[key] = value
