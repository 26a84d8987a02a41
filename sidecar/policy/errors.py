"""Policy errors. Anything here ends in a deny with a stable snake_case ``code``."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.errors import SidecarError

__all__ = [
    "CompileError",
    "DecisionError",
    "LoadOrderError",
    "PolicyError",
    "PolicyLoadError",
    "UnsupportedBuiltinError",
]


class PolicyError(SidecarError):
    """Base class of policy errors."""


class PolicyLoadError(PolicyError):
    """A policy directory that cannot be loaded or compiled (the message names the file)."""


class CompileError(PolicyLoadError):
    """The engine refused the Rego source: each error with its ``file:line:col``."""

    @dataclass(frozen=True)
    class Location:
        file: str
        line: int
        col: int
        message: str

        def __str__(self) -> str:
            col = f":{self.col}" if self.col else ""  # OPA's compiler names the line only
            return f"{self.file}:{self.line}{col}: {self.message}"

    def __init__(self, errors: list[Location]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class UnsupportedBuiltinError(PolicyLoadError):
    """The policy calls a built-in function the embedded engine does not implement.

    OPA would evaluate it; the embedded engine cannot, so the policy is refused at load instead
    of silently deciding differently from OPA.
    """

    def __init__(self, builtin: str, file: str, line: int, why: str | None = None) -> None:
        self.builtin = builtin
        self.file = file
        self.line = line
        what = why or (
            "which is not a function defined in the policy and not a built-in the embedded "
            "engine (regopy) implements"
        )
        super().__init__(
            f"{file}:{line}: calls {builtin!r}, {what}; remove it, or run this policy on a "
            "real OPA server with `policy.engine: opa`"
        )


class DecisionError(PolicyError):
    """No enforceable decision could be had. ``code`` is the deny code and metrics label."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LoadOrderError(PolicyLoadError):
    """grpc's native library was loaded before the engine's: every decision would leak
    (``sidecar/_loadorder.py``). The embedded engine refuses to start rather than leak."""
