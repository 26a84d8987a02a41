"""``agent-sidecar policy check``: everything about a policy directory that can be known
before it runs.

1. OPA's compiler compiles the modules, test files included, where it is available
   (``vet``): what OPA refuses is a ``compile`` finding with OPA's message and line, and the
   portability rules run on OPA's AST. Without it the lexical checks run, with a warning
   naming what is then not checked (a ``opa-compiler`` problem under
   ``AGENT_SIDECAR_REQUIRE_OPA_COMPILER=1``).
2. It loads and compiles on the embedded engine; no built-in the embedded engine lacks is
   called.
3. ``data.json`` documents match ``schemas/data.v1.json`` when the directory has one.
4. Style (lexical lint, the rules of docs/policy-authoring.md):
   ``v1-syntax``       rule bodies need ``if`` (OPA 1.0), partial sets ``contains``
   ``package-path``    the package mirrors the folder (``_test`` suffix for tests)
   ``test-package``    ``*_test.rego`` files are ``*_test`` packages; tests live only there
   ``helper-prefix``   in the decision's package, every rule but the decision starts with ``_``
   ``missing-attribute-test``  a package with tests has one about a missing attribute
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sidecar.policy._rego import CompiledQuery, new_interpreter
from sidecar.policy.compat import RegoModule
from sidecar.policy.errors import CompileError, PolicyLoadError, UnsupportedBuiltinError
from sidecar.policy.portability import PortabilityError
from sidecar.policy.source import load_policy_dir
from sidecar.policy.vet import OpaCompilerRequired, vet, warn_once
from sidecar.policy.vet_options import VetOptions

_PORTABILITY = {
    "divergent-builtin",
    "sprintf-format",
    "not-undefined",
    "untyped-comparison",
    "set-order",
}

__all__ = ["Finding", "check_policy"]

_V0_BODY = re.compile(r"^(?!package\b|import\b|default\b)([A-Za-z_][\w.]*)(\([^)]*\))?\s*\{", re.M)
_V0_PARTIAL = re.compile(r"^([A-Za-z_][\w.]*)\[[^\]]*\]\s*(\{|if\b)", re.M)
_RULE = re.compile(
    r"^(?:default\s+)?([A-Za-z_]\w*)\b(?=[^\n]*?(?::=|=|\bif\b|\bcontains\b|\{))", re.M
)


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    message: str
    col: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f":{self.col}" if self.col else "")
        return f"{where}: {self.rule}: {self.message}"


def check_policy(policy_dir: str | Path, query: str) -> list[Finding]:
    root = Path(policy_dir)
    try:
        source = load_policy_dir(root, include_tests=True)
    except PolicyLoadError as exc:
        return [Finding(str(root), 0, "load", str(exc))]
    findings: list[Finding] = []
    vetting = vet(source.modules, source.data)
    if vetting.warning:
        warn_once(vetting.warning)
        if VetOptions().required:
            findings.append(Finding(str(root), 0, "opa-compiler", vetting.warning))
    findings += [
        Finding(e.file, e.line, "compile", e.message, e.col) for e in vetting.compile_errors
    ]
    if not vetting.compile_errors:
        findings += _embedded_compile(root, source.modules, source.data, query)
    findings += [
        Finding(i.file, i.line, i.rule, f"{i.message} (or run it with `policy.engine: opa`)")
        if i.rule in _PORTABILITY
        else Finding(i.file, i.line, i.rule, i.message)
        for i in vetting.issues
    ]
    findings += _check_data(root, source.data)
    findings += _lint(root, source.modules, query)
    return _unique(findings)


def _embedded_compile(
    root: Path, modules: tuple[RegoModule, ...], data: object, query: str
) -> list[Finding]:
    """What the embedded engine itself refuses (after the vetting, which is not repeated)."""
    try:
        new_interpreter(modules, data, vet=False)
        policy = [m for m in modules if not m.path.endswith("_test.rego")]
        CompiledQuery(policy, data, query)
    except UnsupportedBuiltinError as exc:
        return [Finding(exc.file, exc.line, "unsupported-builtin", str(exc))]
    except CompileError as exc:
        return [Finding(e.file, e.line, "compile", e.message, e.col) for e in exc.errors]
    except (PortabilityError, OpaCompilerRequired):
        return []  # reported from the vetting (every portability issue, not only the first)
    except PolicyLoadError as exc:
        return [Finding(str(root), 0, "compile", str(exc))]
    return []


def _unique(findings: list[Finding]) -> list[Finding]:
    """Drop repeats. The lexical lints and the static checks overlap on v0 syntax: there one
    finding per line stays, the more specific message, found first."""
    seen: set[tuple[str, int, str, str]] = set()
    out = []
    for finding in findings:
        message = "" if finding.rule == "v1-syntax" else finding.message
        key = (finding.file, finding.line, finding.rule, message)
        if key not in seen:
            seen.add(key)
            out.append(finding)
    return out


def _check_data(root: Path, data: object) -> list[Finding]:
    schema_path = root / "schemas" / "data.v1.json"
    if not schema_path.exists():
        return []
    import jsonschema

    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        Finding(
            str(schema_path),
            0,
            "data-schema",
            f"data.{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}",
        )
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    ]


def _lint(root: Path, modules: tuple[RegoModule, ...], query: str) -> list[Finding]:
    findings: list[Finding] = []
    query_package, _, query_rule = query.removeprefix("data.").rpartition(".")
    tested_packages: dict[str, bool] = {}
    for module in modules:
        code = module.code
        is_test = module.path.endswith("_test.rego")
        package = module.package
        for match in _V0_BODY.finditer(code):
            findings.append(
                Finding(
                    module.path,
                    _line(code, match.start()),
                    "v1-syntax",
                    f"rule {match.group(1)} needs `if` before its body (OPA 1.0)",
                )
            )
        for match in _V0_PARTIAL.finditer(code):
            findings.append(
                Finding(
                    module.path,
                    _line(code, match.start()),
                    "v1-syntax",
                    f"partial rule {match.group(1)}[...]: write `{match.group(1)} contains ... if`",
                )
            )
        rel_dir = Path(module.path).resolve().parent.relative_to(root.resolve())
        expected = ".".join(rel_dir.parts)
        actual = package.removesuffix("_test") if is_test else package
        if expected and actual != expected:
            findings.append(
                Finding(
                    module.path,
                    1,
                    "package-path",
                    f"package {package} is not the folder {rel_dir.as_posix()} "
                    f"(expected package {expected}{'_test' if is_test else ''})",
                )
            )
        rules = {m.group(1): _line(code, m.start()) for m in _RULE.finditer(code)}
        tests = [r for r in rules if r.startswith(("test_", "todo_test_"))]
        if is_test and not package.endswith("_test"):
            findings.append(
                Finding(
                    module.path,
                    1,
                    "test-package",
                    f"test file package {package} should end in _test",
                )
            )
        if not is_test and tests:
            findings.append(
                Finding(
                    module.path,
                    rules[tests[0]],
                    "test-package",
                    f"test rule {tests[0]} belongs in a *_test.rego file",
                )
            )
        if is_test:
            base = package.removesuffix("_test")
            tested_packages[base] = tested_packages.get(base, False) or any(
                "missing" in t for t in tests
            )
        if not is_test and package == query_package:
            for rule, line in rules.items():
                if rule != query_rule and not rule.startswith("_"):
                    findings.append(
                        Finding(
                            module.path,
                            line,
                            "helper-prefix",
                            f"helper rule {rule} should start with _ "
                            f"(only {query_rule} is the package's interface)",
                        )
                    )
    for package, has_missing in sorted(tested_packages.items()):
        if not has_missing:
            findings.append(
                Finding(
                    str(root),
                    0,
                    "missing-attribute-test",
                    f"package {package} has no test about a missing attribute "
                    "(name one test_..._missing_...)",
                )
            )
    return findings


def _line(code: str, pos: int) -> int:
    return code.count("\n", 0, pos) + 1
