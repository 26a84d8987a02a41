"""OPA's own compiler (v1.20.2, Go, in-process through ``opa-golib-python-bindings``) as the
judge of what a set of modules means.

A text scanner can be walked around (a call split over two lines, a call at column 0 read as a
rule head); OPA's parser and compiler cannot, because they *are* the meaning. Where the binding
is installed, every load compiles the modules with it: parse errors (v0 bodies), type errors,
unsafe variables, recursion, conflicts are OPA's, with OPA's message and line. ``parse_module``
gives OPA's AST (``rego.parse_module``) for the portability checks (``ast_portability``).

The binding is optional (it declares Python >= 3.14, so it cannot be a declared dependency of a
3.11 package; see docs/policy-engines.md). :func:`unavailable_reason` says why it is missing.
Each check uses a fresh OPA engine that is closed afterwards; results are cached by content.
Go's runtime does not survive ``fork()``: in a process forked after it started here, the
check runs in a fresh process instead (``python -m sidecar.policy.opa_compiler``).
"""

from __future__ import annotations

import functools
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
    "OpaFinding",
    "OpaUnavailable",
    "compile_modules",
    "parse_module",
    "unavailable_reason",
]

# "file:row: code: message", then continuation lines (tab-indented) that belong to it.
_ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<code>rego_\w+): ")
_HEADER = re.compile(r"^(?:.*?: )?\d+ errors? occurred:\s*")
_FRESH_PROCESS_TIMEOUT_S = 120


class OpaUnavailable(RuntimeError):
    """OPA's compiler cannot be used in this process (the binding is not installed)."""


@dataclass(frozen=True)
class OpaFinding:
    """One error as OPA's compiler reports it."""

    file: str
    line: int
    code: str  # OPA's error code: rego_parse_error, rego_type_error, rego_unsafe_var_error ...
    message: str


@functools.cache
def unavailable_reason() -> str:
    """Empty when OPA's compiler can be used here, otherwise why not."""
    try:
        from opa_bindings.engine import _get_lib  # loads the Go library now, not at first use
    except ImportError as exc:
        return f"opa-golib-python-bindings is not installed ({exc})"
    global _go_pid
    try:
        _get_lib()  # a Go c-shared library starts Go's runtime as it loads
    except (OSError, AttributeError) as exc:  # not loadable on this platform / another API
        return f"OPA's Go library does not load here ({exc})"
    _go_pid = os.getpid()
    return ""


def _engine() -> Any:
    reason = unavailable_reason()
    if reason:
        raise OpaUnavailable(reason)
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


def compile_modules(
    modules: Iterable[RegoModule], data: Mapping[str, Any] | None = None
) -> tuple[OpaFinding, ...]:
    """Every error OPA's compiler reports for ``modules`` (with ``data``); empty if it
    compiles. Raises :class:`OpaUnavailable` where the binding is missing."""
    key = json.dumps(
        [[m.path, m.source] for m in modules] + [data or {}], sort_keys=True, ensure_ascii=False
    )
    return _compile_cached(key)


@functools.lru_cache(maxsize=32)
def _compile_cached(key: str) -> tuple[OpaFinding, ...]:
    if _forked_since_go():
        return tuple(OpaFinding(*f) for f in _in_fresh_process({"op": "compile", "key": key}))
    return tuple(OpaFinding(*f) for f in _compile_here(key))


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


def parse_module(module: RegoModule) -> dict[str, Any]:
    """OPA's AST of one module (``rego.parse_module``), as JSON. Raises
    :class:`OpaUnavailable`, or ``ValueError`` with OPA's message if it does not parse."""
    return json.loads(_parse_cached(module.path, module.source))


@functools.lru_cache(maxsize=256)
def _parse_cached(path: str, source: str) -> str:
    if _forked_since_go():
        answer = _in_fresh_process({"op": "parse", "path": path, "source": source})
        if "error" in answer:
            raise ValueError(answer["error"])
        return str(answer["ast"])
    return _parse_here(path, source)


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


# -- fork safety ------------------------------------------------------------------------------
# Go's runtime does not survive fork(): a child that calls into it after the parent started it
# hangs (bench/policy_engine_vs_opa.py shows it). A process forked after OPA's library was used
# here (a prefork server embedding the engine) asks a fresh process instead.

_go_pid: int | None = None


def _forked_since_go() -> bool:
    return _go_pid is not None and _go_pid != os.getpid()


def _in_fresh_process(request: dict[str, Any]) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.policy.opa_compiler"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=_FRESH_PROCESS_TIMEOUT_S,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise OpaUnavailable(f"OPA's compiler failed in a fresh process: {detail[0]}")
    return json.loads(proc.stdout)


def _serve_one_request() -> int:
    """``python -m sidecar.policy.opa_compiler``: one JSON request on stdin, answer on stdout."""
    request = json.loads(sys.stdin.read())
    if request["op"] == "compile":
        answer: Any = _compile_here(request["key"])
    else:
        try:
            answer = {"ast": _parse_here(request["path"], request["source"])}
        except ValueError as exc:
            answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_one_request())
