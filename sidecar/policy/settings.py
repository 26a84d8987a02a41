"""The ``policy`` section: where decisions come from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from sidecar.policy.bundle.settings import BundleSettings
from sidecar.policy.export.settings import DecisionLogSettings, StatusSettings
from sidecar.policy.vet_options import VetOptions
from sidecar.validate import check

__all__ = ["PolicySettings"]


@dataclass(frozen=True)
class PolicySettings:
    """Where decisions come from."""

    engine: Literal["embedded", "opa"] = "embedded"
    dir: Path = Path("rego")
    query: str = "data.agentsidecar.authz.decision"
    timeout_ms: int = 250
    # embedded: interpreters, each with its own compiled plan (~6 MB resident each); opa:
    # connections to OPA. Unset: embedded 1 while evaluations run inline on the event loop
    # (one at a time: a second interpreter would sit idle until the policy moved to threads),
    # 2 with inline_max_ms 0 (always in threads, in parallel); opa 2 (docs/performance.md).
    # In threads, an evaluation stuck past its timeout is replaced by a fresh interpreter, at
    # most SPARE_MAX (2) beyond this (sidecar/policy/_pool.py).
    workers: int | None = None
    # embedded: evaluate on the event loop (no thread hand-off) while evaluations cost at most
    # this much CPU; one costlier and late, one over 10x this (FAR_OVER), or 3 costlier of the
    # last 16 move this revision to the threads, where the wait is bounded by timeout_ms (an
    # outlier alone does not: sidecar/policy/embedded.py). 0: always in threads.
    inline_max_ms: float = 5.0
    # embedded: decisions remembered per revision for inputs that repeat (only when the policy
    # makes that exact: sidecar/policy/_memo.py); 0: every decision is evaluated.
    memo_size: int = 1024
    # embedded: how often the policy dir is checked for changes (0: only on SIGHUP).
    reload_interval_ms: int = 1000
    # opa: the OPA server (http://HOST:PORT or unix:///PATH).
    opa_url: str = "http://127.0.0.1:8181"
    # A second policy evaluated beside the active one for every call; recorded, never enforced.
    shadow: Path | None = None
    # Read-only tools allowed when the engine fails (not when policy denies). Off by default.
    fail_open_on_engine_error: tuple[str, ...] = ()
    # embedded: refuse to load a policy OPA's compiler did not vet (binding missing, Go not
    # loading, its process dead or late) instead of falling back to the lexical checks.
    # AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1 forces it on (docs/policy-engines.md).
    require_opa_compiler: bool = False
    # embedded: how long OPA's compiler (a child process per load/reload) may take.
    opa_compiler_timeout_ms: int = 60000
    # embedded: run OPA's compiler in this process instead (Go's runtime then stays resident:
    # ~26 MB RSS, 5 threads per process; for comparison, bench/policy_engine_vetting.py).
    opa_compiler_in_process: bool = False
    # embedded: policy from an OPA bundle server instead of ``dir`` (docs/policy-engines.md).
    bundle: BundleSettings | None = None
    # OPA's status and decision-log plugins, and the labels of their reports
    # (sidecar/policy/export, docs/policy-engines.md "Status and decision logs").
    status: StatusSettings | None = None
    decision_logs: DecisionLogSettings | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check(
            re.fullmatch(r"data(\.[A-Za-z_][A-Za-z0-9_]*)+", self.query) is not None,
            f"query: {self.query!r} is not a data reference like data.agentsidecar.authz.decision",
        )
        check(self.timeout_ms > 0, "timeout_ms: must be > 0")
        check(0 <= self.inline_max_ms <= 1000, "inline_max_ms: must be between 0 and 1000")
        if self.workers is None:
            threaded = self.engine == "opa" or self.inline_max_ms == 0
            object.__setattr__(self, "workers", 2 if threaded else 1)
        check(
            isinstance(self.workers, int) and 1 <= self.workers <= 64,
            "workers: must be between 1 and 64",
        )
        check(0 <= self.memo_size <= 65536, "memo_size: must be between 0 and 65536")
        check(self.reload_interval_ms >= 0, "reload_interval_ms: must be >= 0")
        check(
            isinstance(self.require_opa_compiler, bool),
            "require_opa_compiler: must be true or false",
        )
        check(
            isinstance(self.opa_compiler_in_process, bool),
            "opa_compiler_in_process: must be true or false",
        )
        check(
            0 < self.opa_compiler_timeout_ms <= 600_000,
            "opa_compiler_timeout_ms: must be between 1 and 600000",
        )
        check(
            self.bundle is None or self.engine == "embedded",
            "bundle: only for the embedded engine (configure OPA's own bundles for engine: opa)",
        )
        parts = urlsplit(self.opa_url)
        check(
            (parts.scheme == "http" and bool(parts.hostname))
            or (parts.scheme == "unix" and bool(parts.path)),
            f"opa_url: {self.opa_url!r} is not http://HOST:PORT or unix:///PATH",
        )

    @property
    def pool_size(self) -> int:
        """``workers`` as resolved (its default depends on the engine and ``inline_max_ms``)."""
        return self.workers if self.workers is not None else 1  # None never outlives __init__

    @property
    def vetting(self) -> VetOptions:
        """How each load of the embedded engine is vetted by OPA's compiler."""
        return VetOptions(
            require_opa_compiler=self.require_opa_compiler,
            isolate=not self.opa_compiler_in_process,
            timeout_s=self.opa_compiler_timeout_ms / 1000,
        )
