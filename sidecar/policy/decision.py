"""The decision contract: validate what policy returned, or deny with a stable code.

A decision is enforceable only if it is exactly the shape of contract version 1. Anything else
(undefined, not an object, a missing or unknown ``effect``, an unknown key, an unknown or
malformed obligation) is a :class:`DecisionError` whose ``code`` becomes the deny code, the
audit code and the metrics label. The codes are listed in ``CODES`` and never renamed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.policy.errors import DecisionError

__all__ = [
    "CODES",
    "EFFECTS",
    "ENGINE_FAILURES",
    "LOG_LEVELS",
    "ApprovalObligation",
    "CredentialObligation",
    "Decision",
    "Obligations",
    "parse_decision",
]

EFFECTS = ("allow", "deny", "step_up")
LOG_LEVELS = ("full", "redacted", "metadata")

# Stable codes. The first three are policy's own answers; the rest are the sidecar failing closed.
CODES = {
    "ok": "policy allowed the call",
    "policy_deny": "policy denied the call",
    "approval_required": "policy requires a human approval of this exact call",
    "policy_undefined": "the decision query was undefined",
    "policy_invalid_decision": "the decision is not an object of contract version 1",
    "policy_unknown_effect": "effect is missing or not allow, deny or step_up",
    "unknown_obligation": "the decision carries an obligation the sidecar does not know",
    "invalid_obligation": "a known obligation has a malformed value",
    "policy_error": "the policy engine failed to evaluate",
    "input_unrepresentable": "the input holds a number the embedded engine cannot compare exactly",
    "policy_timeout": "the policy engine did not answer within its timeout",
    "opa_unavailable": "the OPA server could not be reached",
    "opa_timeout": "the OPA server did not answer in time",
    "opa_bad_response": "the OPA server answered with an error or an unreadable body",
    "fail_open": "the engine failed and this read-only tool is configured to fail open",
}
# Failures of the engine itself (not policy's answer): the only ones fail-open may cover.
ENGINE_FAILURES = frozenset(
    {"policy_error", "policy_timeout", "opa_unavailable", "opa_timeout", "opa_bad_response"}
)
_DECISION_KEYS = {"effect", "reasons", "obligations"}
_EFFECT_CODES = {"allow": "ok", "deny": "policy_deny", "step_up": "approval_required"}


@dataclass(frozen=True)
class CredentialObligation:
    audience: str
    ttl_s: int
    # Token exchange targets: the scopes to ask for, and whether to present the sidecar's
    # JWT-SVID as actor_token (so the issued token's act claim names the agent).
    scopes: tuple[str, ...] = ()
    actor_token: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"audience": self.audience, "ttl_s": self.ttl_s}
        if self.scopes:
            out["scopes"] = list(self.scopes)
        if self.actor_token:
            out["actor_token"] = True
        return out


@dataclass(frozen=True)
class ApprovalObligation:
    approvers: tuple[str, ...]
    ttl_s: int

    def to_dict(self) -> dict[str, Any]:
        return {"approvers": list(self.approvers), "ttl_s": self.ttl_s}


@dataclass(frozen=True)
class Obligations:
    """What the sidecar must do along with the effect. ``log`` defaults to ``metadata``."""

    redact: tuple[str, ...] = ()
    # Data classes replaced in the upstream's answer before the agent gets it.
    redact_response: tuple[str, ...] = ()
    credential: CredentialObligation | None = None
    max_tokens: int | None = None
    log: str = "metadata"
    approval: ApprovalObligation | None = None

    def to_dict(self) -> dict[str, Any]:
        """The obligations as policy stated them (absent ones omitted, ``log`` always set)."""
        out: dict[str, Any] = {"log": self.log}
        if self.redact:
            out["redact"] = list(self.redact)
        if self.redact_response:
            out["redact_response"] = list(self.redact_response)
        if self.credential is not None:
            out["credential"] = self.credential.to_dict()
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.approval is not None:
            out["approval"] = self.approval.to_dict()
        return out


@dataclass(frozen=True)
class Decision:
    """An enforceable decision, or a deny the sidecar made on policy's behalf (``code``)."""

    effect: str
    reasons: tuple[str, ...] = ()
    obligations: Obligations = field(default_factory=Obligations)
    code: str = ""

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise ValueError(f"effect {self.effect!r} is not one of {EFFECTS}")
        if not self.code:
            object.__setattr__(self, "code", _EFFECT_CODES[self.effect])
        if self.code not in CODES:
            raise ValueError(f"code {self.code!r} is not a registered decision code")

    @classmethod
    def fail_closed(cls, error: DecisionError) -> Decision:
        """The deny that stands in for a decision that could not be had."""
        return cls(effect="deny", reasons=(str(error),), code=error.code)

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "reasons": list(self.reasons),
            "obligations": self.obligations.to_dict(),
            "code": self.code,
        }

    def obligations_json(self) -> str:
        return json.dumps(self.obligations.to_dict(), sort_keys=True, separators=(",", ":"))


def parse_decision(result: Any, *, defined: bool = True) -> Decision:
    """Validate a raw policy result; raise :class:`DecisionError` unless it is enforceable."""
    if not defined:
        raise DecisionError("policy_undefined", "the decision query was undefined")
    if not isinstance(result, Mapping):
        raise DecisionError(
            "policy_invalid_decision", f"the decision is {_kind(result)}, not an object"
        )
    unknown = sorted(set(result) - _DECISION_KEYS)
    if unknown:
        raise DecisionError(
            "policy_invalid_decision",
            f"the decision has unknown key {unknown[0]!r} (contract v1 keys: "
            "effect, reasons, obligations)",
        )
    effect = result.get("effect")
    if effect not in EFFECTS:
        raise DecisionError(
            "policy_unknown_effect",
            f"effect is {effect!r}; it must be one of allow, deny, step_up",
        )
    reasons = result.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise DecisionError("policy_invalid_decision", "reasons must be a list of strings")
    obligations = _parse_obligations(result.get("obligations", {}))
    # Reasons are unordered (policies build them from sets, which the engines iterate in
    # different orders): sorted, so the decision enforced and audited is engine-independent.
    return Decision(effect=effect, reasons=tuple(sorted(reasons)), obligations=obligations)


def _parse_obligations(raw: Any) -> Obligations:
    if not isinstance(raw, Mapping):
        raise DecisionError("policy_invalid_decision", "obligations must be an object")
    known = {"redact", "redact_response", "credential", "max_tokens", "log", "approval"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DecisionError(
            "unknown_obligation",
            f"obligation {unknown[0]!r} is not one the sidecar can enforce "
            f"(known: {', '.join(sorted(known))})",
        )
    values: dict[str, Any] = {}
    if "redact" in raw:
        redact = raw["redact"]
        _require(
            isinstance(redact, list) and all(isinstance(c, str) and c for c in redact),
            "redact must be a list of data-class names",
        )
        values["redact"] = tuple(sorted(set(redact)))
    if "redact_response" in raw:
        classes = raw["redact_response"]
        _require(
            isinstance(classes, list) and all(isinstance(c, str) and c for c in classes),
            "redact_response must be a list of data-class names",
        )
        values["redact_response"] = tuple(sorted(set(classes)))
    if "credential" in raw:
        cred = raw["credential"]
        _require(
            isinstance(cred, Mapping)
            and {"audience", "ttl_s"} <= set(cred) <= {"audience", "ttl_s", "scopes", "actor_token"}
            and isinstance(cred["audience"], str)
            and bool(cred["audience"])
            and _positive_int(cred["ttl_s"]),
            "credential must be {audience: non-empty string, ttl_s: positive integer, "
            "scopes?: [string], actor_token?: boolean}",
        )
        scopes = cred.get("scopes", [])
        _require(
            isinstance(scopes, list)
            and all(isinstance(x, str) and x and " " not in x for x in scopes),
            "credential.scopes must be a list of scope names (no spaces)",
        )
        _require(
            isinstance(cred.get("actor_token", False), bool),
            "credential.actor_token must be a boolean",
        )
        values["credential"] = CredentialObligation(
            cred["audience"],
            cred["ttl_s"],
            tuple(sorted(set(scopes))),
            cred.get("actor_token", False),
        )
    if "max_tokens" in raw:
        _require(_positive_int(raw["max_tokens"]), "max_tokens must be a positive integer")
        values["max_tokens"] = raw["max_tokens"]
    if "log" in raw:
        _require(raw["log"] in LOG_LEVELS, f"log must be one of {', '.join(LOG_LEVELS)}")
        values["log"] = raw["log"]
    if "approval" in raw:
        ap = raw["approval"]
        _require(
            isinstance(ap, Mapping)
            and set(ap) == {"approvers", "ttl_s"}
            and isinstance(ap["approvers"], list)
            and all(isinstance(a, str) and a for a in ap["approvers"])
            and _positive_int(ap["ttl_s"]),
            "approval must be {approvers: list of strings, ttl_s: positive integer}",
        )
        values["approval"] = ApprovalObligation(tuple(ap["approvers"]), ap["ttl_s"])
    return Obligations(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DecisionError("invalid_obligation", message)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else type(value).__name__
    )
