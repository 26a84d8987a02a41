"""Strict conversion of parsed YAML into frozen, typed settings dataclasses.

Shared by the sidecar's configuration (``sidecar.config``) and the webhook's
(``sidecar.webhook.settings``): an unknown key, a wrong type or a bad value raises
:class:`KeyedError` carrying the full dotted key, which the loader turns into a
:class:`ConfigError` naming the file. Each settings dataclass validates its own values in
``__post_init__`` by raising ``ValueError("field: message")``; the field becomes part of the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from sidecar.errors import SidecarError

__all__ = ["ConfigError", "KeyedError", "convert"]


class ConfigError(SidecarError):
    """The configuration cannot be used; the message names the file and the key."""


class KeyedError(ValueError):
    """A validation error that knows the full dotted key it belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def convert(tp: Any, value: Any, key: str, base: Path) -> Any:
    """``value`` as an instance of ``tp``; relative paths are resolved against ``base``."""
    where = key or "(top level)"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, key, base)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise KeyedError(where, f"{value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return convert(args[0], value, key, base)
        refusals = []  # the first type that takes the value wins (int | Literal["auto"])
        for arg in args:
            try:
                return convert(arg, value, key, base)
            except KeyedError as exc:
                refusals.append(str(exc))
        raise KeyedError(where, "; or ".join(refusals))
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str) or not isinstance(value, list):
            raise KeyedError(where, f"expected a list, got {_kind(value)}")
        return tuple(convert(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise KeyedError(where, f"expected a mapping, got {_kind(value)}")
        return types.MappingProxyType(
            {str(k): convert(item, v, join(key, str(k)), base) for k, v in value.items()}
        )
    return _convert_scalar(tp, value, where, base)


def _convert_dataclass(tp: Any, value: Any, key: str, base: Path) -> Any:
    where = key or "(top level)"
    if not isinstance(value, Mapping):
        raise KeyedError(where, f"expected a mapping, got {_kind(value)}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp)}
    unknown = sorted(set(map(str, value)) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise KeyedError(join(key, unknown[0]), f"unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = convert(hints[name], value[name], join(key, name), base)
        elif dataclasses.is_dataclass(hints[name]) or typing.get_origin(hints[name]) in (
            Mapping,
            dict,
        ):
            # An absent section is an empty one: its own defaults apply, converted the same way.
            kwargs[name] = convert(hints[name], {}, join(key, name), base)
        elif isinstance(f.default, Path):
            kwargs[name] = (base / f.default).resolve()  # defaults are relative to the file
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyedError(join(key, name), "required key is missing")
    try:
        return tp(**kwargs)
    except KeyedError:
        raise
    except ValueError as exc:
        message = str(exc)
        field_name, sep, rest = message.partition(": ")
        if sep and field_name in fields:
            raise KeyedError(join(key, field_name), rest) from None
        raise KeyedError(where, message) from None


def _convert_scalar(tp: Any, value: Any, where: str, base: Path) -> Any:
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise KeyedError(where, f"expected a path, got {_kind(value)}")
        return (base / value).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            raise KeyedError(where, f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KeyedError(where, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KeyedError(where, f"expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise KeyedError(where, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"config type {tp!r} has no converter")  # a bug in a settings module


def join(key: str, name: str) -> str:
    """The dotted key of ``name`` inside ``key``."""
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(type(value), type(value).__name__)
