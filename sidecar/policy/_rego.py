"""The one module that talks to regopy (rego-cpp). Its errors are translated here, once.

Two regopy behaviours shape this module:

* ``regopy.Input`` mis-encodes strings holding quotes or backslashes, so input is passed as a
  JSON term (``set_input_term``), which round-trips every JSON value exactly (tested).
* Errors are not raised, and ``ok()`` is not enough: an evaluation error may come back as an
  output that is not ``ok()`` (its messages are in an error node tree), or as an ``ok()``
  output whose text is an ``(error ...)`` s-expression, or (rego-cpp bugs) as text that is not
  valid JSON. All three are :class:`EvalError` here, so the caller denies. regopy's own
  ``Output`` class is bypassed because it raises ``JSONDecodeError`` on the last two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import regopy
from regopy import Interpreter, LogLevel, NodeKind
from regopy.rego_shared import (
    rego_bundle_query,
    rego_bundle_query_entrypoint,
    rego_free_output,
    rego_node_get,
    rego_node_size,
    rego_node_type,
    rego_node_value,
    rego_output_node,
    rego_output_ok,
    rego_output_string,
    rego_query,
)

from sidecar._loadorder import LOAD_ORDER_HELP, engine_loaded_first
from sidecar.policy._memo import DecisionMemo
from sidecar.policy._rego_input import UnrepresentableInput, set_input
from sidecar.policy.compat import RegoModule, check_builtins
from sidecar.policy.errors import CompileError, LoadOrderError, PolicyLoadError
from sidecar.policy.vet import enforce
from sidecar.policy.vet_options import VetOptions

__all__ = [
    "ENGINE_VERSION",
    "CompiledQuery",
    "EvalError",
    "compile_entrypoints",
    "new_interpreter",
    "query_entrypoint",
    "query_once",
]

ENGINE_VERSION = f"regopy {regopy.rego_version()}"
_BINDING = "result"
_ERRORMSG = re.compile(r"\(errormsg \d+:([^\n]*)\)")


class EvalError(Exception):
    """rego-cpp reported errors while evaluating (strict built-in errors included)."""

    def __init__(self, messages: list[str]) -> None:
        messages = list(dict.fromkeys(messages))  # rego-cpp repeats one error per rule reached
        super().__init__("; ".join(messages) or "unknown evaluation error")
        self.messages = messages


def new_interpreter(
    modules: Iterable[RegoModule],
    data: Any,
    *,
    vet: bool = True,
    vetting: VetOptions | None = None,
) -> Interpreter:
    """An interpreter with strict built-in errors, the modules and the data loaded.

    Refuses what OPA's compiler refuses, constructs that decide differently on the two engines
    (``vet.enforce``), and a call to a built-in rego-cpp lacks (``UnsupportedBuiltinError``).
    """
    if not engine_loaded_first():
        raise LoadOrderError(LOAD_ORDER_HELP)
    modules = list(modules)
    interp = Interpreter()
    interp.log_level = LogLevel.NONE  # errors come back to us; the engine must not print them
    interp.strict_built_in_errors = True
    if vet:  # False only where the caller vetted a superset (the test runner's workers)
        enforce(
            modules, data, vetting
        )  # OPA's compiler and AST where available (sidecar/policy/vet.py)
    check_builtins(modules, interp.is_builtin)
    for module in modules:
        try:
            interp.add_module(module.path, module.source)
        except (regopy.RegoError, ValueError) as exc:
            raise _compile_error(exc, modules, module.path) from exc
    try:
        # keys sorted: rego-cpp iterates objects in insertion order, OPA in sorted order
        interp.add_data_json(json.dumps(data, ensure_ascii=False, sort_keys=True))
    except (regopy.RegoError, ValueError) as exc:
        raise PolicyLoadError(f"data documents are not accepted by the engine: {exc}") from exc
    return interp


class CompiledQuery:
    """One interpreter with ``query`` compiled once into a bundle; not thread-safe by itself.
    ``vet=False`` only for one more interpreter of modules already vetted (the same load)."""

    def __init__(
        self,
        modules: Iterable[RegoModule],
        data: Any,
        query: str,
        *,
        vetting: VetOptions | None = None,
        vet: bool = True,
    ) -> None:
        self._modules = list(modules)
        self._interp = new_interpreter(self._modules, data, vet=vet, vetting=vetting)
        try:
            self._bundle = self._interp.build(f"{_BINDING} = {query}")
        except (regopy.RegoError, ValueError) as exc:
            raise _compile_error(exc, self._modules, None) from exc
        if not self._bundle.ok():
            raise PolicyLoadError("policy does not compile (the engine built no plan)")

    def evaluate(
        self, input_doc: dict[str, Any], memo: DecisionMemo | None = None
    ) -> tuple[bool, Any]:
        """Return ``(defined, value)``; raise :class:`EvalError` on any engine error and
        :class:`UnrepresentableInput` for a number the engine would misjudge. With ``memo``
        (a memoizable revision's, sidecar/policy/_memo.py), an input the engine accepted
        whose answer is remembered is not handed over nor evaluated again: only inputs the
        engine accepted are remembered, and the key is exact (``DecisionMemo.key``), so an
        input with a remembered key would be accepted too."""
        key = memo.key(input_doc) if memo is not None and memo.wanted() else None
        if key is not None:
            found, value = memo.get(key)  # type: ignore[union-attr]
            if found:
                return True, value
        return self.evaluate_missed(input_doc, memo if key is not None else None, key)

    def evaluate_missed(
        self, input_doc: dict[str, Any], memo: DecisionMemo | None, key: str | None
    ) -> tuple[bool, Any]:
        """Evaluate ``input_doc``, whose ``key`` (``DecisionMemo.key``) was looked up in
        ``memo`` and missed: the answer is remembered under it. No ``key``: not remembered.
        The engine in threads looks the memo up on the event loop and calls this on its
        thread (a remembered answer needs neither a thread nor an interpreter)."""
        try:
            set_input(self._interp._impl, self._interp.set_input_term, input_doc)
        except UnrepresentableInput:
            raise
        except (regopy.RegoError, ValueError, TypeError, RecursionError) as exc:
            raise EvalError([f"input rejected: {_first_line(exc)}"]) from exc
        doc = _run(lambda: rego_bundle_query(self._interp._impl, self._bundle._impl))
        if doc is None or _BINDING not in doc.get("bindings", {}):
            return False, None
        value = doc["bindings"][_BINDING]
        if key is not None and memo is not None:
            memo.put(key, value)
        return True, value


Program = tuple[Interpreter, Any]


def compile_entrypoints(
    modules: Iterable[RegoModule], data: Any, refs: list[str], *, vet: bool = True
) -> Program:
    """Compile ``modules`` once with every ``data.a.b`` in ``refs`` as an entrypoint."""
    interp = new_interpreter(modules, data, vet=vet)
    entrypoints = [ref.removeprefix("data.").replace(".", "/") for ref in refs]
    try:
        bundle = interp.build(None, entrypoints)
    except (regopy.RegoError, ValueError) as exc:
        raise _compile_error(exc, list(modules), None) from exc
    if not bundle.ok():
        raise PolicyLoadError("the policy does not compile (the engine built no plan)")
    return interp, bundle


def query_entrypoint(program: Program, ref: str) -> tuple[bool, Any]:
    """Evaluate one entrypoint of a :func:`compile_entrypoints` program."""
    interp, bundle = program
    entrypoint = ref.removeprefix("data.").replace(".", "/")
    doc = _run(lambda: rego_bundle_query_entrypoint(interp._impl, bundle._impl, entrypoint))
    if doc is None or not doc.get("expressions"):
        return False, None
    return True, doc["expressions"][0]


def query_once(interp: Interpreter, query: str) -> tuple[bool, Any]:
    """Evaluate an ad-hoc query (used by the test runner); same contract as ``evaluate``."""
    doc = _run(lambda: rego_query(interp._impl, query))
    if doc is None or not doc.get("expressions"):
        return False, None
    return True, doc["expressions"][0]


def _run(call: Any) -> dict[str, Any] | None:
    """Run a query call and return its first result, None when undefined, or raise."""
    output = call()
    if not output:
        raise EvalError(["the engine returned no output"])
    try:
        if not rego_output_ok(output):
            raise EvalError(_error_nodes(output))
        text = rego_output_string(output)
    except regopy.RegoError as exc:
        raise EvalError([_first_line(exc)]) from exc
    finally:
        rego_free_output(output)
    if text.strip() == "undefined":
        return None
    if text.lstrip().startswith("(error"):
        raise EvalError(_ERRORMSG.findall(text) or ["evaluation error"])
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalError([f"the engine produced malformed output ({exc.msg})"]) from exc
    if isinstance(doc, list):
        if len(doc) != 1:
            raise EvalError([f"the query produced {len(doc)} results, expected exactly one"])
        doc = doc[0]
    if not isinstance(doc, dict):
        raise EvalError(["the engine produced an output of an unexpected shape"])
    return doc


def _error_nodes(output: Any) -> list[str]:
    """Messages (with their rego-cpp codes) from an error output's node tree."""
    messages: list[str] = []
    root = rego_output_node(output)
    if not root:
        return ["evaluation error"]

    def walk(node: Any, current: list[str]) -> None:
        kind = rego_node_type(node)
        if kind == NodeKind.ErrorMessage:
            current.append(rego_node_value(node))
        elif kind == NodeKind.ErrorCode:
            current.append(f"({rego_node_value(node)})")
        elif kind == NodeKind.ErrorAst:
            return
        for i in range(rego_node_size(node)):
            walk(rego_node_get(node, i), current)

    for i in range(rego_node_size(root)):
        parts: list[str] = []
        walk(rego_node_get(root, i), parts)
        if parts:
            messages.append(" ".join(parts))
    return messages or ["evaluation error"]


_POSITIONED = re.compile(
    r"\(error \d+:([^|\n]*)\|(\d+)\|\d+\s+\(errormsg \d+:([^\n]*?)\)\s*$", re.M
)


def _compile_error(
    exc: BaseException, modules: list[RegoModule], current: str | None
) -> PolicyLoadError:
    """A :class:`CompileError` naming ``file:line:col`` for each error rego-cpp reports (it
    gives a byte offset into the named module), instead of its s-expression dump."""
    sources = {m.path: m.source.encode() for m in modules}
    errors = []
    for path, offset, message in _POSITIONED.findall(str(exc)):
        path = path or current or "?"
        source = sources.get(path, b"")
        at = min(int(offset), len(source))
        start = source.rfind(b"\n", 0, at) + 1
        line = source.count(b"\n", 0, at) + 1
        col = len(source[start:at].decode(errors="replace")) + 1
        errors.append(CompileError.Location(path, line, col, message.strip()))
    if not errors:
        where = f"{current}: " if current else ""
        return PolicyLoadError(f"{where}does not compile: {_first_line(exc)}")
    return CompileError(list(dict.fromkeys(errors)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
