"""Policy inputs generated from the input schema and the shipped data, for the differential run.

Every dimension of ``rego/schemas/input.v1.json`` is varied one or two at a time from valid
baselines (each granted subject and tool), and then in seeded random combinations: unknown,
foreign-domain and confusable subjects and names, every operation, thresholds and the smallest
representable step around them, missing fields, wrong types, delegation and approval shapes.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any


class _Missing:
    """A field left out of the input (survives deepcopy as itself)."""

    def __deepcopy__(self, memo: dict) -> _Missing:
        return self


_MISSING = _Missing()


def _nudge(value: float, direction: float) -> float:
    return math.nextafter(float(value), direction)


def _subjects(data: dict[str, Any]) -> list[Any]:
    known = sorted(set(data["grants"]) | set(data.get("models", {})))
    out: list[Any] = list(known)
    for sid in known[:2]:
        out += [
            sid.replace("demo.example", "evil.example"),  # foreign trust domain, same path
            sid + "/",
            sid.upper(),
            sid.replace("o", "\u043e"),  # Cyrillic o
            sid + "\u0000",
            " " + sid,
        ]
    out += ["spiffe://demo.example/agent/unknown", "", 42, None, ["x"], _MISSING]
    return out


def _tools(data: dict[str, Any]) -> list[Any]:
    names = sorted(
        {t for grant in data["grants"].values() for ts in grant.values() for t in ts}
        | set(data["high_risk"])
        | {m for ms in data.get("models", {}).values() for m in ms}
    )
    out: list[Any] = list(names)
    for name in names[:3]:
        out += [name.upper(), name + " ", name.replace(".", "_"), "TİCKETS.GET"]
    out += ["unknown.tool", "", 7, None, _MISSING]
    return out


def _amounts(limit: float) -> list[Any]:
    return [
        limit,
        _nudge(limit, math.inf),  # the smallest step above: 17 digits, refused before policy
        _nudge(limit, -math.inf),
        limit + 1e-12,  # 15 significant digits: decided
        limit - 1e-12,
        limit + 0.5,
        int(limit) + 1,
        int(limit) - 1,
        float(limit),
        -1,
        0,
        1e15,
        2**53 + 1,
        2**63,  # beyond 64 bits: refused
        5e-324,
        1.7976931348623157e308,
        str(int(limit) * 5),
        "",
        None,
        True,
        [],
        {},
        _MISSING,
    ]


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = doc
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    if value is _MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


def _base(subject: str, tool: str, operation: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "version": 1,
        "request_id": "01J00000000000000000000000",
        "time_ns": 1_763_700_000_000_000_000,
        "subject": {
            "spiffe_id": subject,
            "trust_domain": "demo.example",
            "attestation": "pod-svid",
            "claims": {},
        },
        "action": {
            "kind": kind,
            "name": tool,
            "operation": operation,
            "target": target,
            "arguments": {},
            "data_classes": [],
        },
        "task": {"id": "t-1", "intent": "support", "calls": 0, "tokens": 0, "age_s": 1},
        "delegation": {"chain": [], "depth": 0},
    }


def generate(data: dict[str, Any], *, random_cases: int = 3000, seed: int = 7) -> Iterator[dict]:
    """Yield policy inputs (dicts; each is a fresh copy)."""
    subjects = _subjects(data)
    tools = _tools(data)
    targets = [*sorted(data["targets"]), "unknown-target", "", None, _MISSING]
    operations = ["read", "act", "delegate", "READ", "write", "", None, 1, _MISSING]
    kinds = ["tool", "model", "mcp", "", None, _MISSING]
    classes = [
        [],
        ["email"],
        ["phone", "email"],
        ["credit_card"],
        ["secret", "email"],
        ["private_key"],
        "email",
        [1],
        None,
        _MISSING,
    ]
    chains = [
        [],
        [subjects[1]],
        [subjects[1], subjects[2]],
        [subjects[1]] * 3,
        ["spiffe://demo.example/agent/unknown"],
        [7],
        "x",
        None,
        _MISSING,
    ]
    approvals = [
        _MISSING,
        {"id": "ap-1", "approved_by": "a", "approved_at_ns": 1},
        {"id": "", "approved_by": "a", "approved_at_ns": 1},
        {"id": None},
        "ap-1",
    ]
    tasks = [
        _MISSING,
        None,
        {},
        {"id": "t-1", "intent": "x", "calls": 3, "tokens": 20000},
        {"id": "t-1", "intent": "x", "tokens": 20001},
        {"id": "", "intent": "x"},
        {"id": "t-1", "intent": "x", "tokens": "30000"},
        {"id": 5},
    ]
    tokens = [*_amounts(data["task_token_step_up"])]
    high = data["high_risk"]
    granted = [
        (sid, op, tool)
        for sid, grant in sorted(data["grants"].items())
        for op, names in sorted(grant.items())
        for tool in names
    ]

    def target_of(tool: Any) -> str:
        return tool.split(".")[0] if isinstance(tool, str) and "." in tool else "tickets"

    # Every field of the input and the values it takes (valid, missing, wrong types, ...).
    fields: list[tuple[tuple[str, ...], list[Any]]] = [
        (("subject", "spiffe_id"), subjects),
        (("action", "name"), tools),
        (("action", "operation"), operations),
        (("action", "kind"), kinds),
        (("action", "target"), targets),
        (("action", "data_classes"), classes),
        (("delegation", "chain"), chains),
        (("approval",), approvals),
        (("task",), tasks),
    ]
    # 1. Every grant, each dimension varied alone.
    for sid, op, tool in granted:
        base = _base(sid, tool, op, "tool", target_of(tool))
        yield copy.deepcopy(base)
        variations = [
            *fields,
            (("version",), [2, "1", None, _MISSING]),
            (("subject",), [None, {}, "x", _MISSING]),
            (("action",), [None, {}, _MISSING]),
        ]
        for path, values in variations:
            for value in values:
                doc = copy.deepcopy(base)
                _put(doc, path, copy.deepcopy(value))
                yield doc
    # 2. High-risk thresholds: every amount, with and without approval, each granted subject.
    for tool, rule in sorted(high.items()):
        for sid in sorted(data["grants"]):
            for amount, approval in itertools.product(_amounts(rule["above"]), approvals[:3]):
                doc = _base(sid, tool, "act", "tool", target_of(tool))
                _put(doc, ("action", "arguments", rule["argument"]), amount)
                _put(doc, ("approval",), copy.deepcopy(approval))
                yield doc
    # 3. Model calls: every subject and alias, token counts around the step-up.
    models = [*sorted({m for ms in data.get("models", {}).values() for m in ms}), "gpt-huge"]
    for sid, model, count, cls in itertools.product(
        sorted(data.get("models", {})) + subjects[-6:-4], models, tokens, classes[:5]
    ):
        doc = _base(sid, model, "read", "model", "openai" if "gpt" in model else "local")
        _put(doc, ("action", "api"), "chat")
        _put(doc, ("task", "tokens"), count)
        _put(doc, ("action", "data_classes"), copy.deepcopy(cls))
        yield doc
    # 3b. Model calls by API (issue 33): every subject, alias and API (and none, a wrong type).
    for sid, model, api in itertools.product(
        sorted(data.get("models", {})) + subjects[-6:-4],
        models,
        ["chat", "responses", "embeddings", "messages", _MISSING, 7, ["chat"]],
    ):
        doc = _base(sid, model, "read", "model", "openai" if "gpt" in model else "local")
        _put(doc, ("action", "api"), api)
        yield doc
    # 4. MCP: every MCP grant in every phase, definition state, annotation and task.
    mcp = data.get("mcp", {})
    mcp_granted = [
        (sid, op, name)
        for sid, grant in sorted(mcp.get("grants", {}).items())
        for op, names in sorted(grant.items())
        for name in names
    ]
    pinned = {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": False}
    definitions = [
        pinned,
        {"hash": "sha256:b", "pinned_hash": "sha256:a", "changed": True},
        {"hash": "sha256:a", "pinned_hash": "sha256:a", "changed": "false"},
        {},
        None,
        _MISSING,
    ]
    annotations = [
        {},
        {"destructiveHint": True},
        {"destructiveHint": "true"},
        {"readOnlyHint": True},
        None,
        _MISSING,
    ]
    for (sid, op, name), phase, method, definition, annotation, task in itertools.product(
        [*mcp_granted, (subjects[0], "read", "notes.unknown"), (subjects[0], "act", "tickets.get")],
        ["list", "call", "", None, _MISSING],
        ["tools/call", "prompts/get", _MISSING],
        definitions,
        annotations[:4],
        tasks[:1] + tasks[3:4],
    ):
        doc = _base(
            sid,
            name.replace("*", "any") if isinstance(name, str) else name,
            op,
            "mcp",
            target_of(name),
        )
        _put(doc, ("action", "phase"), phase)
        _put(doc, ("action", "method"), method)
        _put(doc, ("action", "definition"), copy.deepcopy(definition))
        _put(doc, ("action", "annotations"), copy.deepcopy(annotation))
        _put(doc, ("task",), copy.deepcopy(task))
        yield doc
    # 4b. A2A (issue 34): every outbound grant, skill, operation, card state and data class;
    # every inbound caller (IDs, groups, a caller that is not the subject) and chain.
    yield from _a2a_inputs(data, subjects, classes[:6], tasks[:1] + tasks[3:4])
    # 5. Seeded random combinations of everything.
    rng = random.Random(seed)
    for _ in range(random_cases):
        doc = _base(rng.choice(subjects[:4]), "tickets.get", "read", "tool", "tickets")
        for path, values in [*fields, (("action", "arguments", "amount"), _amounts(100))]:
            if rng.random() < 0.5:
                _put(doc, path, copy.deepcopy(rng.choice(values)))
        yield doc


def _a2a_inputs(
    data: dict[str, Any], subjects: list[Any], classes: list[Any], tasks: list[Any]
) -> Iterator[dict]:
    """A2A inputs: outbound (``action.kind: a2a``) and inbound (``a2a_inbound``)."""
    a2a = data.get("a2a", {})
    peers = sorted({p for g in a2a.get("grants", {}).values() for p in g}) or ["billing"]
    skills = sorted(
        {s for g in a2a.get("grants", {}).values() for ss in g.values() for s in ss}
        | {s for ss in a2a.get("high_risk", {}).values() for s in ss}
    )
    skills = [*skills, "", "Refund", "unknown", 7, None, _MISSING]
    a2a_subjects = [*sorted(a2a.get("grants", {})), *subjects[-6:-3]]
    pinned = {
        "digest": "sha256:a",
        "pinned_digest": "sha256:a",
        "changed": False,
        "signed": True,
        "signer": "kid-1",
        "skills": [s for s in skills[:-6] if s != "*"],
    }
    cards = [
        pinned,
        {**pinned, "changed": True},
        {**pinned, "skills": []},
        {**pinned, "changed": "false"},
        {**pinned, "skills": "refund"},
        None,
        _MISSING,
    ]
    operations = [
        ("send", "SendMessage"),
        ("stream", "message/stream"),
        ("get_task", "GetTask"),
        ("cancel_task", "tasks/cancel"),
        ("extended_card", "GetExtendedAgentCard"),
        ("bogus", "Bogus"),
        (_MISSING, _MISSING),
    ]
    outbound = itertools.product(
        a2a_subjects[:3], [*peers, "unknown-peer"], skills, operations, ["read", "act"], cards[:3]
    )
    for i, (sid, peer, skill, (op, method), op_kind, card) in enumerate(outbound):
        name = f"{peer}.{skill}" if isinstance(skill, str) else f"{peer}."
        doc = _base(sid, name, op_kind, "a2a", peer)
        for key, value in (
            ("method", method),
            ("a2a_operation", op),
            ("skill", skill),
            ("card", copy.deepcopy(card)),
        ):
            _put(doc, ("action", key), value)
        _put(doc, ("action", "data_classes"), copy.deepcopy(classes[i % 4]))
        _put(doc, ("task",), copy.deepcopy(tasks[(i // 4) % len(tasks)]))
        yield doc
    for card, cls in itertools.product(cards[3:], classes):
        doc = _base(a2a_subjects[0], f"{peers[0]}.{skills[0]}", "read", "a2a", peers[0])
        for key, value in (
            ("method", "SendMessage"),
            ("a2a_operation", "send"),
            ("skill", skills[0]),
            ("card", copy.deepcopy(card)),
        ):
            _put(doc, ("action", key), value)
        _put(doc, ("action", "data_classes"), copy.deepcopy(cls))
        yield doc
    inbound = a2a.get("inbound", {})
    agents = [*sorted(inbound), "spiffe://demo.example/agent/unknown", 5, _MISSING]
    callers = sorted({c for g in inbound.values() for c in g if not c.startswith("group:")})
    groups = sorted({c[6:] for g in inbound.values() for c in g if c.startswith("group:")})
    kinds = ["workload", "user", "robot", None, _MISSING]
    chains = [
        [],
        callers[:1],
        callers[-1:],
        [callers[0], "spiffe://demo.example/agent/unknown"],
        [7],
        "x",
        _MISSING,
    ]
    users = [
        _MISSING,
        {
            "sub": "jane",
            "iss": "https://idp.example",
            "issuer": "corp",
            "groups": [*groups, "Sales"],
            "roles": [],
            "expires_at": 1,
        },
        {"sub": "bob", "groups": "x"},
    ]
    incoming = itertools.product(
        [*agents[:1], *agents[-3:]],
        [*callers, "spiffe://demo.example/agent/unknown", 3],
        kinds[:3],
        skills,
        ["send", "get_task", "bogus", _MISSING],
    )
    for i, (agent, caller, kind, skill, op) in enumerate(incoming):
        chain, user = chains[i % len(chains)], users[(i // len(chains)) % len(users)]
        doc = _base(caller, "", "act", "a2a_inbound", "self")
        _put(doc, ("action", "name"), skill)
        inb = {
            "agent": agent,
            "caller": {"kind": kind, "id": caller, "via": "mtls"},
            "skill": skill,
            "a2a_operation": op,
            "method": "SendMessage",
        }
        doc["inbound"] = {k: v for k, v in inb.items() if v is not _MISSING}
        doc["inbound"]["caller"] = {k: v for k, v in inb["caller"].items() if v is not _MISSING}
        _put(doc, ("delegation", "chain"), copy.deepcopy(chain))
        _put(doc, ("user",), copy.deepcopy(user))
        _put(doc, ("task",), _MISSING)
        yield doc
