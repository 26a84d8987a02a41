"""Lazy re-exports for a package's ``__init__`` (PEP 562).

Importing ``sidecar.policy.settings`` runs ``sidecar/policy/__init__.py`` first. The
configuration imports every package's settings module, so a package ``__init__`` that
imported its engine, its store or its server would drag the whole stack (and an import cycle)
into reading a config file. Each such ``__init__`` names its public objects here instead:
``from sidecar.policy import Decision`` still works, and loads ``sidecar.policy.decision`` on
first use.

The application does the same for its optional components: the front door, the MCP gateway,
A2A ... are imported only when the configuration turns them on (docs/performance.md). Such an
import runs at start, under :func:`component`, so a component that cannot be loaded (a missing
optional dependency, a broken install) stops ``serve`` with an error naming the setting that
asked for it, never an ``ImportError`` traceback, and never at the first call.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, TracebackType

from sidecar.errors import SidecarError

__all__ = ["ComponentUnavailable", "component", "lazy_exports"]


class ComponentUnavailable(SidecarError):
    """A component the configuration (or the command) asks for cannot be imported."""


# Frames of import hooks (meta path finders, loaders): not where the failing import was written.
_IMPORT_HOOKS = frozenset(
    {"find_spec", "find_module", "create_module", "exec_module", "load_module"}
)


@contextlib.contextmanager
def component(needed_by: str, what: str = "its component") -> Iterator[None]:
    """Around the import (or the build) of ``what``, loaded only when ``needed_by`` (a setting
    such as ``frontdoor.listen``, a command, a config file) asks for it. An ``ImportError``
    becomes :class:`ComponentUnavailable` naming both, the module that failed and the import
    statement that asked for it. So does any other exception raised while a module body runs
    (a broken install: ``SyntaxError``, a ``RuntimeError`` at import time), named by its type
    and place only: its message could hold anything, a secret included. An exception raised
    outside an import (a build that fails) passes through unchanged."""
    try:
        yield
    except ImportError as exc:
        raise ComponentUnavailable(_import_error(needed_by, what, exc)) from exc
    except SyntaxError as exc:  # a module that does not compile: its file and line, msg
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else "an unknown file"
        raise ComponentUnavailable(
            f"{needed_by}: {what} cannot be loaded: {type(exc).__name__} in {where} "
            f"({exc.msg}); is this install broken?"
        ) from exc
    except Exception as exc:
        importing = _module_frame(_below_caller(exc.__traceback__, sys._getframe()))
        if importing is None:
            raise  # not raised by an import: the caller's error, unchanged
        module, where = importing
        raise ComponentUnavailable(
            f"{needed_by}: {what} cannot be loaded: {type(exc).__name__} raised while "
            f"importing {module} ({where}); is this install broken?"
        ) from exc


def _import_error(needed_by: str, what: str, exc: ImportError) -> str:
    module = f"module {exc.name!r}" if exc.name else "a module"
    site = _import_site(exc.__traceback__)
    at = f", imported at {site}" if site else ""
    hint = (
        "is this install missing a dependency?"
        if isinstance(exc, ModuleNotFoundError)
        else "is this install broken (a circular import, a version mismatch)?"
    )
    return (
        f"{needed_by}: {what} cannot be loaded ({type(exc).__name__}: {exc}); {module}{at}; {hint}"
    )


def _frames(tb: TracebackType | None) -> Iterator[tuple[FrameType, int]]:
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _below_caller(tb: TracebackType | None, here: FrameType) -> TracebackType | None:
    """``tb`` without its first frames: this generator's (``here``) and the caller's, the one
    with the ``with`` statement (a module body too, when used at module level)."""
    while tb is not None and tb.tb_frame is here:
        tb = tb.tb_next
    return tb.tb_next if tb is not None else None


def _import_site(tb: TracebackType | None) -> str | None:
    """``file:line`` of the innermost frame that is not an import hook: the import statement
    that failed (Python leaves importlib's own frames out of an ImportError's traceback)."""
    site = None
    for frame, line in _frames(tb):
        code = frame.f_code
        if code.co_name not in _IMPORT_HOOKS and not code.co_filename.startswith("<frozen"):
            site = f"{code.co_filename}:{line}"
    return site


def _module_frame(tb: TracebackType | None) -> tuple[str, str] | None:
    """The module whose body was running, innermost first, and where, when ``tb`` passes
    through one (the exception was raised by an import); None otherwise."""
    found = None
    for frame, line in _frames(tb):
        if frame.f_code.co_name == "<module>":
            found = (
                str(frame.f_globals.get("__name__", "?")),
                f"{frame.f_code.co_filename}:{line}",
            )
    return found


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
