"""The input document handed to rego-cpp: built node by node, and refused where rego-cpp would
decide differently from OPA.

Why not JSON text: parsing the input as a JSON term (``set_input_term``) was ~40% of a decision
(~200 µs for a typical call, ~3.5 µs per scalar); building the term through rego-cpp's input
API costs a ctypes call per node (~60 µs). That API has two traps, handled here:

* ``regoInputString`` takes the string's JSON text without its quotes, unescaped: a quote,
  backslash or control character breaks it (regopy's own ``Input`` has this bug). Strings are
  passed JSON-escaped, which round-trips every string exactly (tested).
* ``regoInputFloat`` formats the double with six decimals (``1e-7`` becomes ``0``). An input
  with a float that six decimals do not represent exactly goes through the JSON term instead.

Numbers rego-cpp cannot compare as OPA does are refused before policy
(:class:`UnrepresentableInput`, code ``input_unrepresentable``): rego-cpp compares floats at
about 15 significant digits (``100.00000000000001 > 100`` is false there, true on OPA), cannot
read doubles near the limits, and divides integers beyond 2^53 in doubles (only
``input.time_ns`` may be larger; see ``ast_portability``'s ``inexact-integer``). A refusal
names the path, never the value (arguments may be sensitive).

Objects are handed over with their keys sorted (code point order, which is the byte order of
their UTF-8, OPA's order): rego-cpp iterates an object in the order it was built, OPA in sorted
order, so ``[k | some k; input.obj[k]]`` comes out the same on both (issue 30).
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from regopy.rego_shared import rego as _lib
from regopy.rego_shared import rego_free_input, rego_new_input

__all__ = ["WIDE_INTEGERS", "UnrepresentableInput", "check_numbers", "set_input"]

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Integers a double holds exactly: rego-cpp divides in doubles and is undefined on == of larger
# ones (issue 30). Only the sidecar's own nanosecond clocks (always 19 digits) may be larger;
# the load-time check ``inexact-integer`` refuses arithmetic and equality on them, and
# comparisons are exact.
_EXACT_MIN, _EXACT_MAX = -(2**53), 2**53
WIDE_INTEGERS = ("time_ns", "approval.approved_at_ns")
# Finite doubles rego-cpp reads and compares exactly, at 15 significant digits (tested).
_FLOAT_MIN, _FLOAT_MAX = 1e-307, 1e308
_escape = json.JSONEncoder(ensure_ascii=False).encode
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_KEYS: dict[str, bytes] = {}


def _untyped(name: str) -> Any:
    """A second handle on ``name`` without regopy's ``argtypes``: ctypes then passes the
    arguments as they are (~0.4 µs a call instead of ~0.6, and a tool call's input is ~100
    calls). Only for functions taking the input handle (a ``c_void_p``), bytes and small
    counts; integers, floats and booleans keep their declared conversions."""
    function = _lib[name]  # indexing returns a new function object; attributes are shared
    function.restype = ctypes.c_uint32
    return function


_string = _untyped("regoInputString")
_int = _lib.regoInputInt
_float = _lib.regoInputFloat
_bool = _lib.regoInputBoolean
_null = _untyped("regoInputNull")
_item = _untyped("regoInputObjectItem")
_object = _untyped("regoInputObject")
_array = _untyped("regoInputArray")
_set_input = _lib.regoSetInput


class UnrepresentableInput(ValueError):
    """A number in the input that the embedded engine would compare differently from OPA."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(
            f"input.{path or '(root)'} is a number the embedded engine cannot compare exactly "
            f"({why}); send it as a string, or run this policy with `policy.engine: opa`"
        )
        self.path = path


class _NeedsTerm(Exception):
    """A float that the node API would round: use the JSON term for this input."""


def _check_float(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise UnrepresentableInput(path, "not finite")
    magnitude = abs(value)
    if magnitude and not _FLOAT_MIN <= magnitude <= _FLOAT_MAX:
        raise UnrepresentableInput(path, "outside 1e-307..1e308 in magnitude")
    if float(format(value, ".15g")) != value:
        raise UnrepresentableInput(path, "more than 15 significant digits")


def _check_int(value: int, path: str) -> None:
    if not _INT_MIN <= value <= _INT_MAX:
        raise UnrepresentableInput(path, "an integer outside 64 bits")
    if path not in WIDE_INTEGERS and not _EXACT_MIN <= value <= _EXACT_MAX:
        raise UnrepresentableInput(path, "an integer beyond 2^53")


def check_numbers(value: Any, path: str = "") -> None:
    """Raise :class:`UnrepresentableInput` for the first number rego-cpp would misjudge."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}" if path else key)
    elif kind is list:
        for index, item in enumerate(value):
            check_numbers(item, f"{path}[{index}]")
    elif kind is float:
        _check_float(value, path)
    elif kind is int:
        _check_int(value, path)


class _Refused(Exception):
    """A number :func:`check_numbers` will name (the builder keeps no paths: it is hot)."""


def _text(value: str) -> bytes:
    """The string as ``regoInputString`` takes it: its JSON text without the quotes."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value.encode()
    return _escape(value)[1:-1].encode()


def _key(value: str) -> bytes:
    """Object keys repeat on every call: their encodings are cached (bounded)."""
    encoded = _KEYS.get(value)
    if encoded is None:
        if len(_KEYS) >= 4096:
            _KEYS.clear()
        encoded = _KEYS[value] = _text(value)
    return encoded


def _build(handle: ctypes.c_void_p, value: Any) -> None:
    kind = type(value)
    if kind is str:
        _string(handle, _text(value))
    elif kind is dict:
        for key in sorted(value) if len(value) > 1 else value:  # in OPA's order (below)
            _string(handle, _key(key))
            _build(handle, value[key])
            _item(handle)
        _object(handle, len(value))
    elif kind is list:
        for item in value:
            _build(handle, item)
        _array(handle, len(value))
    elif kind is bool:
        _bool(handle, value)
    elif kind is int:
        if not _EXACT_MIN <= value <= _EXACT_MAX:
            raise _Refused
        _int(handle, value)
    elif value is None:
        _null(handle)
    elif kind is float:
        magnitude = abs(value)
        if (
            not math.isfinite(value)
            or (magnitude and not _FLOAT_MIN <= magnitude <= _FLOAT_MAX)
            or float(format(value, ".15g")) != value
        ):
            raise _Refused
        if float(f"{value:f}") != value:
            raise _NeedsTerm
        _float(handle, value)
    elif isinstance(value, Mapping):  # rarer shapes last, as json.dumps reads them
        _build(handle, dict(value))
    elif isinstance(value, list | tuple):
        _build(handle, list(value))
    elif isinstance(value, str):  # a str subclass (an Enum member): its plain text
        _build(handle, str.__str__(value))
    elif isinstance(value, int):
        _build(handle, int.__index__(value))
    elif isinstance(value, float):
        _build(handle, float.__float__(value))
    else:
        raise TypeError(f"{kind.__name__} is not a JSON value")


def _build_wide(handle: ctypes.c_void_p, doc: dict[str, Any], wide: frozenset[str]) -> None:
    """An object as :func:`_build` does, but its keys in ``wide`` may hold any 64-bit
    integer (the sidecar's nanosecond clocks: ``time_ns``, ``approval.approved_at_ns``)."""
    for key in sorted(doc):
        item = doc[key]
        _string(handle, _key(key))
        if key in wide and type(item) is int and _INT_MIN <= item <= _INT_MAX:
            _int(handle, item)
        elif key == "approval" and wide is _ROOT_WIDE and type(item) is dict:
            _build_wide(handle, item, _APPROVAL_WIDE)
        else:
            _build(handle, item)
        _item(handle)
    _object(handle, len(doc))


_ROOT_WIDE = frozenset({"time_ns"})
_APPROVAL_WIDE = frozenset({"approved_at_ns"})


def set_input(interp_impl: Any, set_term: Any, doc: dict[str, Any]) -> None:
    """Give ``doc`` to the interpreter (``interp_impl``: its C handle; ``set_term``: its
    ``set_input_term``). Raises :class:`UnrepresentableInput`, ``TypeError``."""
    handle = ctypes.c_void_p(rego_new_input())  # a pointer as the untyped calls need it
    try:
        if type(doc) is dict:
            _build_wide(handle, doc, _ROOT_WIDE)
        else:
            _build(handle, doc)
    except _Refused:
        rego_free_input(handle)
        check_numbers(doc)  # raises, naming the path
        raise UnrepresentableInput("", "a number out of range") from None
    except _NeedsTerm:
        rego_free_input(handle)
        check_numbers(doc)
        set_term(
            json.dumps(
                doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
            )
        )
        return
    except BaseException:
        rego_free_input(handle)
        raise
    try:
        if _set_input(interp_impl, handle) != 0:
            raise ValueError("the engine refused the input document")
    finally:
        rego_free_input(handle)
