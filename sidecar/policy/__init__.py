"""Policy: the input document, the engines that evaluate Rego, and the decision contract."""

from __future__ import annotations

from sidecar.policy.decision import CODES, Decision, Obligations, parse_decision
from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.engine import EngineResult, PolicyEngine
from sidecar.policy.errors import (
    CompileError,
    DecisionError,
    LoadOrderError,
    PolicyError,
    PolicyLoadError,
    UnsupportedBuiltinError,
)
from sidecar.policy.input import Action, ApprovalInfo, TaskInfo, build_input

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
    "TaskInfo",
    "UnsupportedBuiltinError",
    "build_input",
    "parse_decision",
]
