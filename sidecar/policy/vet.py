"""Every policy load, ``policy check`` and ``policy test`` decide what the modules mean here.

With OPA's compiler in the process (``opa_compiler``): OPA compiles the modules (and data), and
whatever it refuses (v0 bodies, type errors, unsafe variables, a call at column 0 that OPA
reads as a rule conflicting with a built-in, recursion ...) is refused with OPA's message and
line; then the portability rules run on OPA's AST (``ast_portability``).

OPA's compiler runs in a short-lived child process by default (``VetOptions.isolate``), so
Go's runtime is not resident in ``serve``. Without it (binding missing, Go not loading, its
process dead or late), the lexical checks (``portability``, ``static_check``) run instead, and
a warning says what is then not checked. ``serve`` falls back rather than refuse by default,
because the binding cannot be a declared dependency (it declares Python >= 3.14); with
``policy.require_opa_compiler: true`` (or ``AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1``) such a load
is refused instead (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.policy import opa_compiler
from sidecar.policy.arithmetic import (
    data_number_issues,
    lexical_arithmetic_issues,
    literal_issues,
)
from sidecar.policy.ast_arithmetic import ast_arithmetic_issues
from sidecar.policy.ast_portability import ast_portability_issues
from sidecar.policy.ast_set_order import set_order_issues
from sidecar.policy.compat import RegoModule
from sidecar.policy.errors import CompileError, PolicyLoadError, UnsupportedBuiltinError
from sidecar.policy.portability import PortabilityError, PortabilityIssue, portability_issues
from sidecar.policy.static_check import static_issues
from sidecar.policy.vet_options import REQUIRE_ENV, VetOptions

__all__ = [
    "NOT_CHECKED",
    "REQUIRE_ENV",
    "OpaCompilerRequired",
    "VetOptions",
    "Vetting",
    "enforce",
    "vet",
    "warn_once",
]

log = logging.getLogger(__name__)

NOT_CHECKED = (
    "OPA's compiler is not available ({reason}): the policy is checked by a lexical scan "
    "only, so type errors that need inference, unsafe variables, arithmetic on a value "
    "that comes from the input or a float through more than one definition (or through a "
    "comprehension's variable), a guard `x == round(x)` written in another body than the "
    "arithmetic, and calls, `not` and comparisons written in forms the scan does not "
    "recognise are NOT checked; install opa-golib-python-bindings (docs/policy-engines.md)"
)


class OpaCompilerRequired(PolicyLoadError):
    """OPA's compiler is required (``policy.require_opa_compiler`` or
    ``AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1``) and did not vet this load."""


@dataclass(frozen=True)
class Vetting:
    """What the checker found. ``checker`` is ``"opa"`` or ``"lexical"`` (then ``warning``
    says what was not checked)."""

    checker: str
    compile_errors: tuple[CompileError.Location, ...]
    issues: tuple[PortabilityIssue, ...]
    warning: str = ""


def vet(
    modules: Iterable[RegoModule],
    data: Mapping[str, Any] | None = None,
    options: VetOptions | None = None,
) -> Vetting:
    """Check ``modules`` by OPA's compiler where it is available, lexically otherwise."""
    options = options or VetOptions()
    modules = list(modules)
    reason = opa_compiler.unavailable_reason()
    if reason:
        return _lexical(modules, data, NOT_CHECKED.format(reason=reason))
    try:
        result = opa_compiler.check(
            modules, data, isolate=options.isolate, timeout_s=options.timeout_s
        )
    except opa_compiler.OpaUnavailable as exc:
        return _lexical(modules, data, NOT_CHECKED.format(reason=str(exc)))
    if result.findings:
        errors = tuple(
            CompileError.Location(f.file, f.line, 0, f"{f.code}: {f.message} (OPA's compiler)")
            for f in result.findings
        )
        return Vetting("opa", errors, ())
    asts = [(m, json.loads(ast)) for m, ast in zip(modules, result.asts, strict=True)]
    issues = sorted(
        [
            *ast_portability_issues(asts),
            *set_order_issues(asts),
            *ast_arithmetic_issues(asts, data),
            *data_number_issues(data),
        ],
        key=lambda i: (i.file, i.line, i.rule, i.message),
    )
    return Vetting("opa", (), tuple(issues))


def _lexical(modules: list[RegoModule], data: Mapping[str, Any] | None, warning: str) -> Vetting:
    issues = [*portability_issues(modules), *data_number_issues(data)]
    for module in modules:
        issues += lexical_arithmetic_issues(module, data)
        if not module.path.endswith("_test.rego"):  # test inputs: guarded per test
            issues += literal_issues(module)
    functions = {f for m in modules for f in m.defined_functions()}
    for module in modules:
        for s in static_issues(module, functions):
            issues.append(PortabilityIssue(s.file, s.line, s.rule, s.message))
    issues.sort(key=lambda i: (i.file, i.line, i.rule, i.message))
    return Vetting("lexical", (), tuple(issues), warning)


_warned: set[str] = set()


def warn_once(warning: str) -> None:
    """Log ``warning`` the first time this process sees it (each load would repeat it)."""
    if warning and warning not in _warned:
        _warned.add(warning)
        log.warning(warning)


def enforce(
    modules: Iterable[RegoModule],
    data: Mapping[str, Any] | None = None,
    options: VetOptions | None = None,
) -> Vetting:
    """Raise for the first problem (``CompileError`` with OPA's messages,
    ``UnsupportedBuiltinError``, ``PortabilityError``); warn (once per reason) when only the
    lexical checks ran, or refuse then (:class:`OpaCompilerRequired`) if OPA's compiler is
    required (``options.require_opa_compiler`` or ``AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1``)."""
    options = options or VetOptions()
    result = vet(modules, data, options)
    if result.warning:
        if options.required:
            raise OpaCompilerRequired(
                "policy.require_opa_compiler (or "
                f"{REQUIRE_ENV}=1) is set, and the policy was not vetted by it: " + result.warning
            )
        warn_once(result.warning)
    if result.compile_errors:
        raise CompileError(list(result.compile_errors))
    if result.issues:
        first = result.issues[0]
        if first.builtin:
            raise UnsupportedBuiltinError(first.builtin, first.file, first.line, first.message)
        raise PortabilityError(first)
    return result
