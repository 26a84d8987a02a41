"""Lazy re-exports for a package's ``__init__`` (PEP 562).

Importing ``sidecar.policy.settings`` runs ``sidecar/policy/__init__.py`` first. The
configuration imports every package's settings module, so a package ``__init__`` that
imported its engine, its store or its server would drag the whole stack (and an import cycle)
into reading a config file. Each such ``__init__`` names its public objects here instead:
``from sidecar.policy import Decision`` still works, and loads ``sidecar.policy.decision`` on
first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a public name to the
    submodule (relative to ``package``) that defines it. Submodules themselves resolve too,
    as they would after an eager import."""

    def __getattr__(name: str) -> object:
        submodule = exports.get(name)
        if submodule is None:
            if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(sys.modules[package], name, value)  # resolved once
        return value

    return __getattr__
