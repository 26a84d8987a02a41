"""AuthZEN 1.0 requests to policy input, and decisions back: pure functions, no I/O.

Request (``subject``, ``action``, ``resource``, ``context``):

* ``subject`` ``{type: "agent", id: SPIFFE ID, properties: {user?: {...}}}``, or
  ``{type: "user", id: SUB, properties: {agent: SPIFFE ID, iss?, groups?, roles?}}``. The
  agent becomes ``input.subject`` with ``attestation: "authzen"`` (asserted by the caller,
  not attested by the sidecar); the user, when given, ``input.user``.
* ``resource`` ``{type: "tool" | "model" | "mcp_tool", id: NAME, properties: {arguments?:
  {...}}}``: a configured tool or model, or a pinned MCP tool (``SERVER.tool``), found in the
  :class:`~sidecar.authzen.catalog.Catalog`. Its target and operation come from the sidecar's
  configuration, never from the request.
* ``action`` ``{name: "call" | "read" | "act" | "delegate"}``: an operation name must match the
  resource's configured one.

Response: ``{decision: true}`` only for ``allow``; ``context`` carries the decision id,
effect, code, reasons and obligations (which the enforcement point must apply), and for
``step_up`` ``context.step_up`` with the approvers. Evaluation problems of one item (an
unknown tool, a malformed subject) are ``decision: false`` with ``context.error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.authzen.catalog import RESOURCE_TYPES, Catalog, CatalogEntry
from sidecar.classify import classify
from sidecar.errors import SidecarError
from sidecar.identity.errors import InvalidSpiffeIdError
from sidecar.identity.subject import Subject
from sidecar.policy import Action
from sidecar.users.user import User

__all__ = [
    "ENTITIES",
    "AuthZenRequestError",
    "Evaluation",
    "EvaluationError",
    "evaluations_of",
    "find_resource",
    "parse_evaluation",
    "parse_subject",
    "to_action",
    "to_decision",
]

ENTITIES = ("subject", "action", "resource")
VERBS = ("call", "read", "act", "delegate")
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
_ASSERTED_ISSUER = "urn:agent-sidecar:authzen"


class AuthZenRequestError(SidecarError):
    """The whole request is malformed: HTTP 400 with this message."""


class EvaluationError(SidecarError):
    """One evaluation cannot be decided: ``decision: false`` with ``context.error``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Evaluation:
    subject: Subject
    user: User | None
    action: Action


def evaluations_of(body: Mapping[str, Any], limit: int) -> tuple[list[dict[str, Any]], str]:
    """The evaluations of a boxcar request, top-level defaults merged in, and the semantic."""
    items = body.get("evaluations")
    if items is None or items == []:
        items = [{}]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise AuthZenRequestError("evaluations must be an array of objects")
    if len(items) > limit:
        raise AuthZenRequestError(f"at most {limit} evaluations per request")
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise AuthZenRequestError("options must be an object")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in SEMANTICS:
        raise AuthZenRequestError(f"evaluations_semantic must be one of {', '.join(SEMANTICS)}")
    merged = []
    for item in items:
        evaluation = {key: item.get(key, body.get(key)) for key in (*ENTITIES, "context")}
        missing = [key for key in ENTITIES if evaluation[key] is None]
        if missing:
            raise AuthZenRequestError(f"{missing[0]} is required (in the evaluation or as default)")
        merged.append(evaluation)
    return merged, semantic


def parse_evaluation(request: Mapping[str, Any], catalog: Catalog) -> Evaluation:
    for key in ENTITIES:
        if not isinstance(request.get(key), dict):
            raise AuthZenRequestError(f"{key} is required and must be an object")
    subject_doc, resource, action_doc = (request[k] for k in ("subject", "resource", "action"))
    subject, user = parse_subject(subject_doc)
    entry = find_resource(resource, catalog)
    verb = action_doc.get("name")
    if verb not in VERBS:
        raise EvaluationError(400, "action.name must be call, read, act or delegate")
    if verb != "call" and verb != entry.operation:
        raise EvaluationError(
            400, f"{entry.type} {entry.id!r} is a {entry.operation} operation, not {verb}"
        )
    properties = resource.get("properties") or {}
    arguments = properties.get("arguments", {}) if isinstance(properties, dict) else None
    if not isinstance(arguments, dict):
        raise EvaluationError(400, "resource.properties.arguments must be an object")
    return Evaluation(subject, user, to_action(entry, arguments))


def find_resource(resource: Mapping[str, Any], catalog: Catalog) -> CatalogEntry:
    """The configured resource ``resource`` names (404 when there is none)."""
    kind, name = resource.get("type"), resource.get("id")
    if kind not in RESOURCE_TYPES:
        raise EvaluationError(400, f"resource.type must be one of {', '.join(RESOURCE_TYPES)}")
    if not isinstance(name, str) or not name:
        raise EvaluationError(400, "resource.id must be a non-empty string")
    entry = catalog.find(kind, name)
    if entry is None:
        what = "pinned MCP tool" if kind == "mcp_tool" else kind
        raise EvaluationError(404, f"{what} {name!r} is not configured")
    return entry


def to_action(entry: CatalogEntry, arguments: Mapping[str, Any]) -> Action:
    """The policy action for ``entry``: target and operation from configuration. An MCP tool
    is a ``tools/call`` of its pinned definition (annotations unknown: none are given)."""
    common = {
        "name": entry.id,
        "operation": entry.operation,
        "target": entry.target,
        "arguments": dict(arguments),
        "data_classes": classify(arguments),
    }
    if entry.type == "mcp_tool":
        pinned = {"hash": entry.pinned_hash, "pinned_hash": entry.pinned_hash, "changed": False}
        return Action(
            kind="mcp",
            phase="call",
            method="tools/call",
            annotations={},
            definition=pinned,
            **common,  # type: ignore[arg-type]
        )
    if entry.type == "model":  # (issue 33: policy grants models per API)
        return Action(kind="model", api=entry.api, **common)  # type: ignore[arg-type]
    return Action(kind=entry.type, **common)  # type: ignore[arg-type]


def parse_subject(doc: Mapping[str, Any]) -> tuple[Subject, User | None]:
    kind, ident = doc.get("type"), doc.get("id")
    properties = doc.get("properties") or {}
    if not isinstance(ident, str) or not ident or not isinstance(properties, dict):
        raise EvaluationError(400, "subject.id must be a non-empty string")
    if kind == "agent":
        agent, user_doc = ident, properties.get("user")
        if user_doc is not None and not isinstance(user_doc, dict):
            raise EvaluationError(400, "subject.properties.user must be an object")
    elif kind == "user":
        agent, user_doc = properties.get("agent"), {**properties, "sub": ident}
        if not isinstance(agent, str):
            raise EvaluationError(400, "a user subject needs properties.agent (a SPIFFE ID)")
    else:
        raise EvaluationError(400, "subject.type must be agent or user")
    try:
        subject = Subject(spiffe_id=agent, attestation="authzen")
    except InvalidSpiffeIdError as exc:
        raise EvaluationError(400, f"the agent is not a SPIFFE ID: {exc}") from exc
    return subject, _user(user_doc) if user_doc is not None else None


def _user(doc: Mapping[str, Any]) -> User:
    def strings(key: str) -> tuple[str, ...]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise EvaluationError(400, f"user {key} must be an array of strings")
        return tuple(value)

    sub, iss = doc.get("sub"), doc.get("iss", _ASSERTED_ISSUER)
    if not isinstance(sub, str) or not sub or not isinstance(iss, str) or not iss:
        raise EvaluationError(400, "the user needs a sub (and iss, if given, a string)")
    return User(
        sub=sub,
        iss=iss,
        issuer="authzen",
        expires_at=0,
        groups=strings("groups"),
        roles=strings("roles"),
    )


def to_decision(result: Any) -> dict[str, Any]:
    """A pipeline ``CallResult`` as an AuthZEN Decision."""
    decision = result.decision
    context: dict[str, Any] = {"id": result.decision_id, "code": result.code}
    if decision is None:  # stopped before policy answered (an engine or state failure)
        context["reason"] = result.message
        return {"decision": False, "context": context}
    context |= {"effect": decision.effect, "reasons": list(decision.reasons)}
    obligations = decision.obligations.to_dict()
    if obligations != {"log": "metadata"}:
        context["obligations"] = obligations
    if decision.effect == "step_up":
        approval = decision.obligations.approval
        context["step_up"] = {
            "approval_required": True,
            "approvers": list(approval.approvers) if approval is not None else [],
        }
    allowed = decision.effect == "allow" and result.code in ("ok", "fail_open")
    return {"decision": allowed, "context": context}


def error_decision(error: EvaluationError) -> dict[str, Any]:
    return {
        "decision": False,
        "context": {"error": {"status": error.status, "message": str(error)}},
    }
