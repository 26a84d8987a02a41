"""Policy: the input document, the engines that evaluate Rego, and the decision contract."""

from __future__ import annotations

from sidecar._lazy import lazy_exports

__all__ = [
    "CODES",
    "Action",
    "ApprovalInfo",
    "CompileError",
    "Decision",
    "DecisionError",
    "EmbeddedEngine",
    "EngineResult",
    "LoadOrderError",
    "Obligations",
    "PolicyEngine",
    "PolicyError",
    "PolicyLoadError",
    "PolicySettings",
    "TaskInfo",
    "UnsupportedBuiltinError",
    "build_input",
    "parse_decision",
]

# Loaded on first use (sidecar/_lazy.py says why): reading the configuration imports
# sidecar.policy.settings, which need not load the engines.
__getattr__ = lazy_exports(
    __name__,
    {
        "CODES": "decision",
        "Decision": "decision",
        "Obligations": "decision",
        "parse_decision": "decision",
        "EmbeddedEngine": "embedded",
        "EngineResult": "engine",
        "PolicyEngine": "engine",
        "CompileError": "errors",
        "DecisionError": "errors",
        "LoadOrderError": "errors",
        "PolicyError": "errors",
        "PolicyLoadError": "errors",
        "UnsupportedBuiltinError": "errors",
        "Action": "input",
        "ApprovalInfo": "input",
        "TaskInfo": "input",
        "build_input": "input",
        "PolicySettings": "settings",
    },
)
