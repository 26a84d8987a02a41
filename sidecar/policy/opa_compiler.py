"""OPA's own compiler (v1.20.2, Go, through ``opa-golib-python-bindings``) as the judge of what
a set of modules means.

A text scanner can be walked around (a call split over two lines, a call at column 0 read as a
rule head); OPA's parser and compiler cannot, because they *are* the meaning. Where the binding
is installed, every load compiles the modules with it: parse errors (v0 bodies), type errors,
unsafe variables, recursion, conflicts are OPA's, with OPA's message and line; and OPA's AST of
each module (``rego.parse_module``) feeds the portability checks (``ast_portability``).

**Out of the caller's process** by default (:func:`check` with ``isolate=True``): one
short-lived child (``python -m sidecar.policy.opa_compiler``) compiles and parses the whole
module set and exits, so Go's runtime (~26 MB RSS, 5 threads) is never resident in ``serve``,
and a process that forks is never holding it. The child is time-bounded; one that dies, hangs
or answers garbage is :class:`OpaUnavailable` (``vet`` then fails closed when the compiler is
required). In-process (``isolate=False``, or Go already running here, as in the test oracle)
it is the same code. Results are cached by content.

The binding is optional (it declares Python >= 3.14, so it cannot be a declared dependency of a
3.11 package; see docs/policy-engines.md). :func:`unavailable_reason` says why it is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.policy.compat import RegoModule

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "OpaCheck",
    "OpaFinding",
    "OpaUnavailable",
    "check",
    "go_loaded_here",
    "unavailable_reason",
]

# "file:row: code: message", then continuation lines (tab-indented) that belong to it.
_ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<code>rego_\w+): ")
_HEADER = re.compile(r"^(?:.*?: )?\d+ errors? occurred:\s*")
DEFAULT_TIMEOUT_S = 60.0
_CHILD = (sys.executable, "-m", "sidecar.policy.opa_compiler")


class OpaUnavailable(RuntimeError):
    """OPA's compiler cannot be used in this process (the binding is not installed)."""


@dataclass(frozen=True)
class OpaFinding:
    """One error as OPA's compiler reports it."""

    file: str
    line: int
    code: str  # OPA's error code: rego_parse_error, rego_type_error, rego_unsafe_var_error ...
    message: str


@dataclass(frozen=True)
class OpaCheck:
    """OPA's verdict on a module set: its errors, or (when it compiles) the AST of each module
    as JSON text, in the order given."""

    findings: tuple[OpaFinding, ...]
    asts: tuple[str, ...] = ()


@functools.cache
def unavailable_reason() -> str:
    """Empty when the binding is installed, otherwise why not. Does not start Go here (a
    library that is installed but does not load surfaces as :class:`OpaUnavailable`)."""
    if importlib.util.find_spec("opa_bindings") is None:
        return "opa-golib-python-bindings is not installed"
    return ""


def _load_go_here() -> None:
    """Load OPA's Go library into this process (which starts Go's runtime)."""
    global _go_pid
    try:
        from opa_bindings.engine import _get_lib
    except ImportError as exc:
        raise OpaUnavailable(f"opa-golib-python-bindings is not installed ({exc})") from None
    try:
        _get_lib()  # a Go c-shared library starts Go's runtime as it loads
    except (OSError, AttributeError) as exc:  # not loadable on this platform / another API
        raise OpaUnavailable(f"OPA's Go library does not load here ({exc})") from None
    _go_pid = os.getpid()


def go_loaded_here() -> bool:
    """Whether Go's runtime runs in this very process (not inherited through fork)."""
    return _go_pid is not None and _go_pid == os.getpid()


def check(
    modules: Iterable[RegoModule],
    data: Mapping[str, Any] | None = None,
    *,
    isolate: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> OpaCheck:
    """OPA's errors for ``modules`` (with ``data``), and their ASTs when there are none.

    With ``isolate`` (and Go not already running here) it runs in a short-lived child process
    bounded by ``timeout_s``. Raises :class:`OpaUnavailable` when the binding is missing, Go
    does not load, or the child dies, hangs or answers something else."""
    reason = unavailable_reason()
    if reason:
        raise OpaUnavailable(reason)
    modules = list(modules)
    key = json.dumps(
        [[m.path, m.source] for m in modules] + [data or {}], sort_keys=True, ensure_ascii=False
    )
    here = not _forked_since_go() and (go_loaded_here() or not isolate)
    return _check_cached(key, here, timeout_s)


@functools.lru_cache(maxsize=32)
def _check_cached(key: str, here: bool, timeout_s: float) -> OpaCheck:
    if here:
        return _check_here(key)
    answer = _in_child({"op": "check", "key": key}, timeout_s)
    try:
        findings = tuple(
            OpaFinding(str(f), int(n), str(c), str(m)) for f, n, c, m in answer["findings"]
        )
        asts = tuple(str(a) for a in answer["asts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OpaUnavailable(f"OPA's compiler process answered malformed output ({exc})") from None
    if not findings and len(asts) != len(json.loads(key)) - 1:
        raise OpaUnavailable("OPA's compiler process answered malformed output (ASTs missing)")
    return OpaCheck(findings, asts)


def _check_here(key: str) -> OpaCheck:
    findings = tuple(OpaFinding(*f) for f in _compile_here(key))
    if findings:
        return OpaCheck(findings)
    pairs = json.loads(key)[:-1]
    return OpaCheck((), tuple(_parse_here(path, source) for path, source in pairs))


def _engine() -> Any:
    if not go_loaded_here():
        _load_go_here()
    from opa_bindings import OpaEngine

    return OpaEngine()


def _parse_errors(text: str, fallback_file: str) -> list[tuple[str, int, str, str]]:
    """OPA's multi-error text split into ``(file, line, code, message)``."""
    text = _HEADER.sub("", text.strip(), count=1)
    out: list[tuple[str, int, str, str]] = []
    for raw in text.splitlines():
        match = _ERROR_LINE.match(raw)
        if match:
            message = raw[match.end() :].strip()
            out.append((match["file"], int(match["line"]), match["code"], message))
        elif out and raw.strip() and out[-1][2] != "rego_parse_error":
            # a type error's have:/want: lines; a parse error's are a source excerpt (dropped)
            file, line, code, message = out[-1]
            out[-1] = (file, line, code, f"{message} {raw.strip()}")
    if not out and text:
        out.append((fallback_file, 0, "rego_compile_error", text))
    return out


def _compile_here(key: str) -> list[tuple[str, int, str, str]]:
    from opa_bindings import OpaError

    *pairs, data = json.loads(key)
    engine = _engine()
    findings: list[tuple[str, int, str, str]] = []
    try:
        for path, source in pairs:
            try:
                engine.add_policy(path, source)
            except OpaError as exc:  # parse errors come per module, at add time
                findings += _parse_errors(exc.message, path)
        if findings:  # the rest would report what the unparsed modules left undefined
            return findings
        try:
            engine.add_data(data)
            engine.eval_query("__compiled := true")  # compiles every module, as a load does
        except OpaError as exc:
            root = pairs[0][0] if pairs else "<policy>"
            findings += _parse_errors(exc.message, root)
    finally:
        engine.close()
    return findings


def _parse_here(path: str, source: str) -> str:
    from opa_bindings import OpaError

    engine = _engine()
    try:
        rows = engine.eval_query(
            "__ast := rego.parse_module(input.path, input.source)",
            {"path": path, "source": source},
        )
    except OpaError as exc:
        raise ValueError(exc.message) from None
    finally:
        engine.close()
    return json.dumps(rows[0]["__ast"])


# -- the child process -------------------------------------------------------------------
# Go's runtime does not survive fork(): a child that calls into it after the parent started it
# hangs (bench/policy_engine_vs_opa.py shows it). So a process forked after OPA's library was
# used here asks a fresh process too, whatever ``isolate`` says.

_go_pid: int | None = None


def _forked_since_go() -> bool:
    return _go_pid is not None and _go_pid != os.getpid()


def _in_child(request: dict[str, Any], timeout_s: float) -> Any:
    """One request to a fresh ``python -m sidecar.policy.opa_compiler``; its JSON answer."""
    try:
        proc = subprocess.run(
            _CHILD,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:  # run() has killed it
        raise OpaUnavailable(
            f"OPA's compiler process did not answer within {timeout_s:g} s (killed)"
        ) from None
    except OSError as exc:
        raise OpaUnavailable(f"OPA's compiler process could not start ({exc})") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise OpaUnavailable(f"OPA's compiler process failed: {detail[0]}")
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise OpaUnavailable("OPA's compiler process answered malformed output") from None
    if not isinstance(answer, dict):
        raise OpaUnavailable("OPA's compiler process answered malformed output")
    if "unavailable" in answer:
        raise OpaUnavailable(str(answer["unavailable"]))
    return answer


def _serve_one_request() -> int:
    """``python -m sidecar.policy.opa_compiler``: one JSON request on stdin, answer on stdout."""
    request = json.loads(sys.stdin.read())
    try:
        result = _check_here(request["key"])
    except OpaUnavailable as exc:
        answer: Any = {"unavailable": str(exc)}
    else:
        answer = {
            "findings": [list(f.__dict__.values()) for f in result.findings],
            "asts": list(result.asts),
        }
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_one_request())
