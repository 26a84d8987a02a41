"""How a policy load is vetted by OPA's compiler (``vet``): required or not, in a child
process or not, and for how long. Kept apart so settings and engines can name it cheaply."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["REQUIRE_ENV", "VetOptions"]

# Forces ``require_opa_compiler`` on (it can only tighten, never relax, the setting): for
# ``policy check``/``policy test``/``policy eval``, which read no config file, and for CI.
REQUIRE_ENV = "AGENT_SIDECAR_REQUIRE_OPA_COMPILER"


@dataclass(frozen=True)
class VetOptions:
    """``require_opa_compiler``: refuse a load OPA's compiler did not vet (binding missing, Go
    not loading, its process dead or late) instead of falling back to the lexical checks.
    ``isolate``: run OPA's compiler in a short-lived child process, so Go's runtime is never
    resident in this one. ``timeout_s``: how long that child may take."""

    require_opa_compiler: bool = False
    isolate: bool = True
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 3600:
            raise ValueError("timeout_s: must be in (0, 3600] seconds")

    @property
    def required(self) -> bool:
        """The setting, or the environment override (``AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1``)."""
        return self.require_opa_compiler or os.environ.get(REQUIRE_ENV) == "1"
