"""Policy errors. Anything here ends in a deny with a stable snake_case ``code``."""

from __future__ import annotations

from sidecar.errors import SidecarError

__all__ = [
    "DecisionError",
    "PolicyError",
    "PolicyLoadError",
    "UnsupportedBuiltinError",
]


class PolicyError(SidecarError):
    """Base class of policy errors."""


class PolicyLoadError(PolicyError):
    """A policy directory that cannot be loaded or compiled (the message names the file)."""


class UnsupportedBuiltinError(PolicyLoadError):
    """The policy calls a built-in function the embedded engine does not implement.

    OPA would evaluate it; the embedded engine cannot, so the policy is refused at load instead
    of silently deciding differently from OPA.
    """

    def __init__(self, builtin: str, file: str, line: int) -> None:
        self.builtin = builtin
        self.file = file
        self.line = line
        super().__init__(
            f"{file}:{line}: calls {builtin!r}, which is not a function defined in the policy and "
            "not a built-in the embedded engine (regopy) implements; remove it, or run this "
            "policy on a real OPA server with `policy.engine: opa`"
        )


class DecisionError(PolicyError):
    """No enforceable decision could be had. ``code`` is the deny code and metrics label."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
