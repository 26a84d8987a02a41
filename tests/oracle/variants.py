"""Policy variants beyond the shipped one, for the differential run (issue 30, deliverable 4).

Each variant is the shipped policy with every data table populated (user groups, more
high-risk tools with fractional thresholds, several approvers, model grants, token budgets,
delegation depth, external targets, MCP settings) and one extra module of generated rules that
use arithmetic, sets and the allowed built-ins, each feeding ``_deny`` or ``_high_risk`` (so it
shows in the whole decision). Seeded: variant ``n`` is the same on every run.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import REGO

__all__ = ["GROUPS", "Variant", "variant"]

GROUPS = ["Ops", "ops", "support", "Support", "payments-oncall", "É-team", "a", "B"]

# Rule templates: every one passes OPA's compiler and the sidecar's load checks (asserted by
# loading each variant); `{...}` fields are filled per variant.
_TEMPLATES = [
    # arithmetic on an argument, typed first
    """_deny contains msg if {{
	amount := input.action.arguments.amount
	is_number(amount)
	amount == round(amount)
	abs(amount) <= 9007199254740992
	scaled := (amount * {mul}) + {add}
	is_number(scaled)
	scaled > {limit}
	msg := sprintf("variant: amount scaled to %v is above {limit}", [round(scaled)])
}}""",
    # sets: the user's groups against a data table, intersected
    """_deny contains msg if {{
	is_array(input.user.groups)
	have := {{g | some g in input.user.groups; is_string(g)}}
	blocked := {{g | some g in data.agentsidecar.variant.blocked_groups}}
	both := have & blocked
	count(both) > 0
	msg := sprintf("variant: %v blocked group(s)", [count(both)])
}}""",
    # sets: union and difference of data classes, membership only
    """_high_risk contains msg if {{
	is_array(input.action.data_classes)
	classes := {{c | some c in input.action.data_classes; is_string(c)}}
	watched := {{c | some c in data.agentsidecar.variant.watched_classes}} | {{"{extra_class}"}}
	hits := classes & watched
	count(hits - {{"email"}}) > 0
	msg := sprintf("variant: %v watched class(es)", [count(hits)])
}}""",
    # string built-ins on the tool name
    """_deny contains msg if {{
	name := input.action.name
	is_string(name)
	parts := split(name, ".")
	count(parts) > {max_parts}
	concat("/", parts) != name
	msg := sprintf("variant: %v has %v parts", [name, count(parts)])
}}""",
    """_deny contains msg if {{
	name := input.action.name
	is_string(name)
	strings.any_prefix_match(name, data.agentsidecar.variant.blocked_prefixes)
	not startswith(name, "{allowed_prefix}")
	msg := sprintf("variant: %v is blocked by prefix", [trim_suffix(name, ".")])
}}""",
    """_high_risk contains msg if {{
	name := input.action.name
	is_string(name)
	glob.match("{glob}", ["."], name)
	msg := sprintf("variant: %v matches {glob}", [name])
}}""",
    # arithmetic on the delegation depth and chain
    """_deny contains msg if {{
	depth := input.delegation.depth
	is_number(depth)
	depth == round(depth)
	abs(depth) <= 9007199254740992
	is_array(input.delegation.chain)
	budget := data.agentsidecar.variant.depth_budget
	is_number(budget)
	weight := (depth + count(input.delegation.chain)) * {mul_depth}
	weight > budget
	msg := sprintf("variant: delegation weight %v", [weight])
}}""",
    # subtraction and multiplication on integers (exact below 2^53; `/` and `%` are refused,
    # divergent-arithmetic)
    """_high_risk contains msg if {{
	tokens := input.task.tokens
	is_number(tokens)
	tokens == round(tokens)
	abs(tokens) < 9007199254740992
	divisor := data.agentsidecar.variant.token_divisor
	is_number(divisor)
	share := tokens - divisor * {share}
	is_number(share)
	share >= 0
	tokens != {rem}
	msg := sprintf("variant: task tokens %v above the share", [share])
}}""",
    # substring / indexof / replace on the target
    """_deny contains msg if {{
	target := input.action.target
	is_string(target)
	i := indexof(target, "{needle}")
	is_number(i)
	i >= 0
	replace(target, "{needle}", "_") != target
	msg := sprintf("variant: target %v has {needle} at %v", [target, i])
}}""",
    # object.get with a typed default, and numbers.range
    """_deny contains msg if {{
	n := object.get(input.action.arguments, "count", 0)
	is_number(n)
	n > 0
	n <= 50
	n == round(n)
	big := [i |
		some j in numbers.range(1, n)
		j == round(j)
		abs(j) <= 9007199254740992
		i := j * {step}
		i != {max_big}
	]
	count(big) > {max_big}
	msg := sprintf("variant: %v multiples of {step}", [count(big)])
}}""",
]


@dataclass(frozen=True)
class Variant:
    seed: int
    root: Path  # the policy directory
    data: dict[str, Any]  # data.agentsidecar of this variant
    module: str  # the generated module's text


def _data(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    tools = sorted({t for g in data["grants"].values() for ts in g.values() for t in ts})
    data["user_groups"] = {
        tool: rng.sample(GROUPS, rng.randint(1, 3)) for tool in rng.sample(tools, 3)
    }
    data["high_risk"] = {
        **data["high_risk"],
        "tickets.create": {"argument": "priority", "above": rng.choice([2, 2.5, 0.1, 1e3])},
        "kb.search": {"argument": "limit", "above": rng.choice([10, 99.5, 0])},
    }
    data["approvers"] = rng.sample(["group:payments-oncall", "user:zed", "user:Amy", "group:B"], 3)
    data["approval_ttl_s"] = rng.choice([60, 900, 3600])
    data["max_delegation_depth"] = rng.choice([0, 1, 2, 3])
    data["model_max_tokens"] = rng.choice([1, 512, 4096])
    data["task_token_step_up"] = rng.choice([0, 100, 20000])
    data["redact_external"] = sorted(set(data["redact_external"]) | {rng.choice(["ip", "Email"])})
    flip = rng.choice(sorted(data["targets"]))
    data["targets"][flip] = {"external": not data["targets"][flip]["external"]}
    data["mcp"]["step_up_destructive"] = rng.choice([True, False])
    data["variant"] = {
        "blocked_groups": rng.sample(GROUPS, 2),
        "watched_classes": rng.sample(["phone", "secret", "Email", "ip", "us_ssn"], 2),
        "blocked_prefixes": rng.sample(["payments.", "partner.", "tickets.c", "kb"], 2),
        "depth_budget": rng.choice([2, 5, 9]),
        "token_divisor": rng.choice([3, 1000, 7]),
    }
    return data


def _module(rng: random.Random) -> str:
    fields = {
        "mul": rng.choice([2, 5, 3, -1]),  # integers: `*` on a float is refused
        "add": rng.choice([0, 1, 10]),
        "limit": rng.choice([150, 201, 99.75]),
        "extra_class": rng.choice(["credit_card", "phone", "Secret"]),
        "max_parts": rng.choice([1, 2]),
        "allowed_prefix": rng.choice(["payments.refund", "kb.search", "partner"]),
        "glob": rng.choice(["*.get", "tickets.*", "*.*.*"]),
        "mul_depth": rng.choice([1, 2, 3]),
        "share": rng.choice([1, 5, 20]),
        "rem": rng.choice([0, 3]),
        "needle": rng.choice(["s", "ay", "-"]),
        "step": rng.choice([2, 3, 7]),
        "max_big": rng.choice([1, 4, 10]),
    }
    chosen = rng.sample(_TEMPLATES, rng.randint(5, len(_TEMPLATES)))
    rules = "\n\n".join(t.format(**fields) for t in chosen)
    return f"package agentsidecar.authz\n\n# generated variant rules\n\n{rules}\n"


def variant(seed: int, work: Path) -> Variant:
    """Variant ``seed``: the shipped policy, its data populated, one generated module; written
    under ``work`` (its own directory)."""
    rng = random.Random(seed)
    root = work / f"variant-{seed}"
    shutil.copytree(REGO, root, ignore=shutil.ignore_patterns("*_test.rego", "schemas"))
    base = json.loads((REGO / "agentsidecar" / "data.json").read_text())
    data = _data(rng, base)
    (root / "agentsidecar" / "data.json").write_text(json.dumps(data, indent=1))
    module = _module(rng)
    (root / "agentsidecar" / "authz" / "variant.rego").write_text(module)
    return Variant(seed, root, data, module)
