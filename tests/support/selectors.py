"""Kubernetes label selectors, evaluated as the API server does (metav1.LabelSelector).

``matchLabels`` and every ``matchExpressions`` requirement must all hold; an empty selector
matches everything; ``NotIn`` and ``DoesNotExist`` hold when the key is absent (see
k8s.io/apimachinery/pkg/labels: "NotIn ... or the key does not exist").
"""

from __future__ import annotations

from typing import Any

__all__ = ["matches"]


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator = requirement["key"], requirement["operator"]
        values = requirement.get("values") or []
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            raise ValueError(f"not a label selector operator: {operator!r}")
        if not ok:
            return False
    return True
