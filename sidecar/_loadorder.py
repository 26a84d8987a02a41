"""The embedded engine's native library must be loaded before grpc's.

rego-cpp (``librego_shared.so``, shipped in regopy) leaks about 26 KB per evaluation, without
bound, when grpc's native library (``cygrpc``) was mapped into the process first; loaded the
other way round it leaks nothing (measured: 0.00 KB per decision over 225k calls). Loading only
``ctypes.CDLL(<cygrpc .so>)`` before the first ``import regopy`` is enough to trigger it, and
neither allocator tunables nor a larger static TLS surplus change it; why rego-cpp depends on
load order is not known (``tools/rego_leak_repro.py`` reproduces it for the upstream report).

So the order is made by construction and checked, not hoped for:

* importing ``sidecar`` (every entry point does: the CLI, the test suite, a library user's
  ``from sidecar... import``) calls :func:`preload`, which loads regopy first when grpc is not
  yet loaded;
* building an embedded engine checks :func:`engine_loaded_first`, which reads the process's
  real link map (``dl_iterate_phdr``: the order in which shared objects were mapped) and
  refuses with ``LoadOrderError`` if cygrpc came first, with the fix in the message.

This module imports nothing from ``sidecar``: it runs first, from ``sidecar/__init__.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["LOAD_ORDER_HELP", "engine_loaded_first", "loaded_objects", "preload"]

ENGINE_LIB = "librego_shared.so"
GRPC_LIB = "cygrpc"


def preload() -> None:
    """Import regopy now unless grpc's native library is already in the process (then the
    damage is done, and building an engine will say so)."""
    if any(GRPC_LIB in name for name in loaded_objects()):
        return
    import regopy  # noqa: F401  (loads librego_shared.so)


class _PhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p
)


def loaded_objects() -> list[str]:
    """Paths of the shared objects mapped into this process, in the order they were loaded.

    Linux/glibc only; elsewhere an empty list (nothing is checked there)."""
    if not sys.platform.startswith("linux"):
        return []
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    names: list[str] = []

    def visit(info: ctypes._Pointer[_PhdrInfo], _size: int, _data: object) -> int:
        raw = info.contents.dlpi_name
        if raw:
            names.append(raw.decode(errors="replace"))
        return 0

    libc.dl_iterate_phdr(_CALLBACK(visit), None)
    return names


LOAD_ORDER_HELP = (
    "grpc's native library was loaded before the policy engine's (regopy), and in that "
    "order rego-cpp leaks ~26 KB per decision without bound. Import `sidecar` (or "
    "`regopy`) before `grpc` in this process, e.g. as the first import of your program; "
    "see docs/policy-engines.md"
)


def engine_loaded_first() -> bool:
    """False only when cygrpc is mapped and was mapped before ``librego_shared.so``."""
    order = loaded_objects()
    engine = next((i for i, n in enumerate(order) if n.endswith(ENGINE_LIB)), None)
    grpc_at = next((i for i, n in enumerate(order) if GRPC_LIB in n), None)
    if grpc_at is None:
        return True
    return engine is not None and engine < grpc_at
