"""A ValidatingAdmissionPolicy evaluated the way the API server does, with a real CEL engine.

Kubernetes compiles each policy's ``variables`` and ``validations`` with CEL and binds
``object``, ``namespaceObject``, ``params`` and ``variables``; a request is in scope if it
matches ``matchConstraints`` (resource rules and label selectors). This runs the same
expressions through cel-python (a CEL implementation; the expressions used here are
standard CEL: macros, ``has``, ``size``, ``string``, ``startsWith``), so a typo or a wrong
field path fails a test instead of a cluster's admission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import celpy

from tests.support.selectors import matches

__all__ = ["Verdict", "admit"]


@dataclass(frozen=True)
class Verdict:
    in_scope: bool
    failures: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.failures


def admit(
    policy: dict[str, Any],
    pod: dict[str, Any],
    namespace: dict[str, Any],
    params: dict[str, Any] | None = None,
    operation: str = "CREATE",
    subresource: str = "",
) -> Verdict:
    spec = policy["spec"]
    constraints = spec["matchConstraints"]
    resource = "pods" + (f"/{subresource}" if subresource else "")
    in_rules = any(
        operation in rule["operations"] and resource in rule["resources"]
        for rule in constraints["resourceRules"]
    )
    labels = (pod.get("metadata") or {}).get("labels") or {}
    ns_labels = (namespace.get("metadata") or {}).get("labels") or {}
    if not (
        in_rules
        and matches(constraints.get("namespaceSelector"), ns_labels)
        and matches(constraints.get("objectSelector"), labels)
    ):
        return Verdict(in_scope=False)
    env = celpy.Environment()
    bindings: dict[str, Any] = {
        "object": celpy.json_to_cel(pod),
        "namespaceObject": celpy.json_to_cel(namespace),
    }
    if "paramKind" in spec:
        if params is None:
            raise AssertionError("the policy takes params: give them")
        bindings["params"] = celpy.json_to_cel(params)
    variables: dict[str, Any] = {}
    for variable in spec.get("variables", []):
        bindings["variables"] = celpy.json_to_cel(variables) if not variables else _map(variables)
        variables[variable["name"]] = _eval(env, variable["expression"], bindings)
    bindings["variables"] = _map(variables)
    failures = []
    for validation in spec["validations"]:
        result = _eval(env, validation["expression"], bindings)
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"not a bool: {validation['expression']!r} -> {result!r}")
        if not result:
            failures.append(" ".join(validation["message"].split()))
    return Verdict(in_scope=True, failures=tuple(failures))


def _map(values: dict[str, Any]) -> Any:
    return celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in values.items()})


def _eval(env: celpy.Environment, expression: str, bindings: dict[str, Any]) -> Any:
    program = env.program(env.compile(expression))
    result = program.evaluate(bindings)
    if isinstance(result, celpy.CELEvalError):
        raise AssertionError(f"CEL error in {expression!r}: {result}")
    return result
