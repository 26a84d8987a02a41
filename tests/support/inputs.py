"""Sample policy inputs (v1) for CLI tests."""

from __future__ import annotations

import copy
from typing import Any

_BASE: dict[str, Any] = {
    "version": 1,
    "request_id": "01J00000000000000000000000",
    "time_ns": 1,
    "subject": {
        "spiffe_id": "spiffe://demo.example/agent/support",
        "trust_domain": "demo.example",
        "attestation": "static",
        "claims": {},
    },
    "action": {
        "kind": "tool",
        "name": "tickets.get",
        "operation": "read",
        "target": "tickets",
        "arguments": {"id": "7"},
        "data_classes": [],
    },
    "delegation": {"chain": [], "depth": 0},
}


def sample_input(**action: Any) -> dict[str, Any]:
    """The demo agent reading ticket 7; keyword arguments replace fields of ``action``."""
    doc = copy.deepcopy(_BASE)
    doc["action"].update(action)
    return doc
