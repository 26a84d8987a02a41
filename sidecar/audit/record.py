"""Audit records: one JSON line per call (allowed, denied or failed), written before the
answer goes back to the agent.

A record answers: who called which tool, with what, under which policy, what was decided and
what came back. Argument values and results appear only as the decision's ``log`` obligation
allows: ``full`` (as sent), ``redacted`` (detected data classes replaced) or ``metadata``
(argument names and sizes only, the default and what every failed call gets). Credentials are
never part of a record: the sidecar never puts them in the structures recorded here.

Writers implement :class:`AuditSink` (``sidecar.audit.log.AuditLog``: hash chain, signed
checkpoints, sinks, strict or best-effort mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.classify import DETECTORS, redact
from sidecar.errors import SidecarError

__all__ = ["AuditError", "AuditSink", "CallRecord", "payload_view", "result_view"]

RECORD_VERSION = 1
_RESULT_LIMIT = 4096


class AuditError(SidecarError):
    """A record could not be written; the call fails closed with ``audit_unavailable``."""


class AuditSink(Protocol):
    @property
    def strict(self) -> bool:
        """Strict: a failed write raises; the pipeline writes an intent record before relay."""
        ...

    @property
    def alive(self) -> bool:
        """False once records can no longer be written (best_effort: its writer stopped);
        the sidecar then reports NOT_SERVING and relays nothing."""
        ...

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class CallRecord:
    """What is known about one call; becomes one audit line via :meth:`to_dict`."""

    decision_id: str
    rpc: str
    time_ns: int
    # "call" (CallTool, Check) or "task" (StartTask, EndTask).
    type: str = "call"
    subject: dict[str, Any] | None = None
    # The verified user the agent acts for: sub and iss only, never the token.
    user: dict[str, Any] | None = None
    action: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    delegation: list[str] = field(default_factory=list)
    # What the agent said the call is for (CallToolRequest.intent).
    intent: str = ""
    # The step-up approval this call created, waited for or used.
    approval: dict[str, Any] | None = None
    # Model calls: alias, provider, provider model, stream, token usage.
    model: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    # The policy input, when the log obligation allows it (for `policy replay`).
    input: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    status: str = "OK"
    code: str = "ok"
    message: str = ""
    relayed: bool = False
    upstream: dict[str, Any] | None = None
    trace_id: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "record_version": RECORD_VERSION,
            "type": self.type,
            "time": datetime.fromtimestamp(self.time_ns / 1e9, UTC).isoformat(),
            "time_ns": self.time_ns,
            "decision_id": self.decision_id,
            "rpc": self.rpc,
            "subject": self.subject,
            "action": self.action,
            "task": self.task,
            "delegation": self.delegation,
            "intent": self.intent,
            "approval": self.approval,
            "model": self.model,
            "policy": self.policy,
            "input": self.input,
            "decision": self.decision,
            "shadow": self.shadow,
            "outcome": {
                "status": self.status,
                "code": self.code,
                "message": self.message,
                "relayed": self.relayed,
            },
            "upstream": self.upstream,
            "trace_id": self.trace_id,
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }
        if self.user is not None:
            out["user"] = self.user
        return out


def payload_view(value: Any, log: str) -> dict[str, Any]:
    """How arguments (or a result) appear in a record under a ``log`` obligation."""
    if log == "full":
        return {"log": "full", "value": value}
    if log == "redacted":
        return {"log": "redacted", "value": redact(value, [d.name for d in DETECTORS])}
    if isinstance(value, dict):
        return {"log": "metadata", "keys": sorted(value)}
    return {"log": "metadata"}


def result_view(body: bytes, content_type: str, log: str) -> dict[str, Any]:
    """The upstream's answer as recorded: size and type always, content per ``log``."""
    out: dict[str, Any] = {"bytes": len(body), "content_type": content_type}
    if log in ("full", "redacted"):
        text = body[:_RESULT_LIMIT].decode("utf-8", errors="replace")
        out["truncated"] = len(body) > _RESULT_LIMIT
        out["body"] = text if log == "full" else redact(text, [d.name for d in DETECTORS])
    return out
