"""Hypothesis strategies for policy inputs, generated from ``rego/schemas/input.v1.json``.

The schema gives the shape (objects, required and optional properties, enums, consts,
arrays, integer minimums, patterns); the data of the policy under test gives the strings worth
trying (granted subjects and tools, targets, data classes, user groups), mixed with their
mixed-case and confusable twins and with free text, so that allows, step-ups and denies are all
reached. Free-form objects (``arguments``, ``claims``, ``annotations``) get the keys policies
read (``amount``, ``priority``, ``count``, ``destructiveHint``, ...) with numbers of every kind,
including those the embedded engine refuses (so refusals are compared too). Now and then a
value is replaced by one of the wrong type, as a hostile caller would send.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import strategies as st

from tests.conftest import REGO

__all__ = ["SCHEMA", "inputs"]

SCHEMA: dict[str, Any] = json.loads((REGO / "schemas" / "input.v1.json").read_text())

_EXACT = st.one_of(
    st.integers(-1000, 1000),
    st.sampled_from([0, 1, 2, 2.5, 99.5, 100, 100.0, 100.5, 101, 1e-7, 0.1, 1e3, -0.5, 2**53]),
    st.decimals(places=2, min_value=-1000, max_value=1000, allow_nan=False).map(float),
)


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int) -> Any:
    """``common``, and ``rare`` one time in ``one_in`` (one_of would drop a repeated branch;
    a middle value avoids hypothesis's bias to the ends of a range)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in // 2 else common)


_NUMBERS = _mostly(
    _EXACT,
    st.one_of(
        st.integers(-(2**64), 2**64),  # beyond 2^53 / 64 bits: refused per call
        st.floats(allow_nan=False, allow_infinity=False),  # mostly 17 digits: refused
        st.sampled_from([100.00000000000001, 5e-324, 1.7976931348623157e308]),
    ),
    5,
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, st.text(max_size=8))
_WRONG = st.one_of(st.none(), st.booleans(), _NUMBERS, st.lists(_SCALARS, max_size=2))


def _twins(values: list[str]) -> list[str]:
    out = list(values)
    for value in values[:6]:
        out += [value.upper(), value.capitalize(), value + " ", value.replace("o", "\u043e")]
    return out


def _pools(data: dict[str, Any]) -> dict[str, list[Any]]:
    subjects = sorted(set(data["grants"]) | set(data.get("models", {})))
    subjects += sorted(set(data.get("mcp", {}).get("grants", {})))
    tools = sorted(
        {t for g in data["grants"].values() for ts in g.values() for t in ts}
        | set(data["high_risk"])
        | set(data.get("user_groups", {}))
        | {m for ms in data.get("models", {}).values() for m in ms}
        | {
            t
            for g in data.get("mcp", {}).get("grants", {}).values()
            for ts in g.values()
            for t in ts
        }
    )
    classes = sorted(set(data["sensitive_classes"]) | set(data["redact_external"]))
    variant = data.get("variant", {})
    groups = sorted(
        {g for gs in data.get("user_groups", {}).values() for g in gs}
        | set(variant.get("blocked_groups", []))
    )
    return {
        "subject.spiffe_id": [*_twins(subjects), "spiffe://evil.example/agent/support"],
        "subject.trust_domain": ["demo.example", "evil.example", "Demo.example"],
        "action.name": [*_twins(tools), "a.b.c.d", "tickets.get.", "x"],
        "action.target": [*_twins(sorted(data["targets"])), "unknown", " kb"],
        "action.data_classes": [*_twins(classes), "Email", "ip", "secret"],
        "user.groups": _twins([*groups, "support", "Ops"]),
        "user.roles": ["admin", "Admin", "viewer"],
        "delegation.chain": _twins(subjects),
        "approval.approved_by": ["local:oncall", "user:Amy"],
    }


def _text(path: str, pools: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    pool = pools.get(path)
    free = st.text(alphabet=string.ascii_letters + ".:/-_ éİ", min_size=1, max_size=24)
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), free) if pool else free


def _free_object(path: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = ["amount", "priority", "limit", "count", "id", "destructiveHint", "readOnlyHint"]
    values = st.one_of(_NUMBERS, _SCALARS, st.lists(_SCALARS, max_size=3))
    return st.dictionaries(st.sampled_from(keys), values, max_size=4)


def _from_schema(node: dict[str, Any], path: str, pools: dict[str, list[Any]]) -> Any:
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if not props:
            return _free_object(path)
        required = set(node.get("required", []))
        fixed = {
            k: _maybe_wrong(_from_schema(v, f"{path}.{k}".lstrip("."), pools))
            for k, v in props.items()
            if k in required
        }
        optional = {
            k: _maybe_wrong(_from_schema(v, f"{path}.{k}".lstrip("."), pools))
            for k, v in props.items()
            if k not in required
        }
        return st.fixed_dictionaries(fixed, optional=optional)
    if kind == "array":
        items = node.get("items", {})
        if items.get("type") == "string" and path in pools:
            return st.lists(st.sampled_from(pools[path]), max_size=4, unique=True)
        return st.lists(_from_schema(items, path, pools), max_size=3)
    if kind == "string":
        return _text(path, pools)
    if kind == "integer":
        low = node.get("minimum")
        if path in ("time_ns", "approval.approved_at_ns"):
            return st.integers(1_700_000_000_000_000_000, 1_900_000_000_000_000_000)
        return _mostly(st.integers(min_value=low, max_value=30_000), st.integers(min_value=low), 5)
    if kind == "number":
        return st.one_of(st.floats(min_value=node.get("minimum", 0), max_value=1e6), _NUMBERS)
    if kind == "boolean":
        return st.booleans()
    return _SCALARS


def _maybe_wrong(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what the schema says; sometimes (1 in 25) a value of the wrong type."""
    return _mostly(strategy, _WRONG, 25)


def _granted(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(kind, subject, operation, tool)`` of every grant in ``data``."""
    out = [
        ("tool", sid, op, tool)
        for sid, grant in data["grants"].items()
        for op, tools in grant.items()
        for tool in tools
    ]
    out += [
        ("model", sid, "act", model)
        for sid, models in data.get("models", {}).items()
        for model in models
    ]
    out += [
        ("mcp", sid, op, tool)
        for sid, grant in data.get("mcp", {}).get("grants", {}).items()
        for op, tools in grant.items()
        for tool in tools
    ]
    return sorted(out)


def _aim(doc: Any, grant: tuple[str, str, str, str], twin: str | None) -> Any:
    """``doc`` pointed at a grant (so that allows and step-ups are reached)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("action"), dict):
        return doc
    kind, subject, operation, tool = grant
    if isinstance(doc.get("subject"), dict):
        doc["subject"]["spiffe_id"] = subject
    action = doc["action"]
    action.update(kind=kind, operation=operation, name=twin or tool)
    action["target"] = tool.split(".", 1)[0] if kind != "model" else "openai"
    return doc


def inputs(data: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Policy inputs shaped by the schema, with strings drawn from ``data`` (the policy's
    ``data.agentsidecar``); half of them aimed at one of its grants."""
    shaped = _from_schema(SCHEMA, "", _pools(data))
    grants = _granted(data)
    if not grants:
        return shaped
    aimed = st.builds(
        _aim,
        shaped,
        st.sampled_from(grants),
        st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["X", "tickets.GET"])),
    )
    return st.one_of(shaped, aimed)
