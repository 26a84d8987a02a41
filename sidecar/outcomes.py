"""Outcomes on the wire: every stable code and the gRPC status it is answered with.

One table, so the server, the SDK and the docs agree. Codes are snake_case, never renamed, and
double as audit and metrics labels (bounded: the keys of ``STATUS_BY_CODE``).
"""

from __future__ import annotations

import grpc

from sidecar.policy.decision import CODES as DECISION_CODES

__all__ = ["STATUS_BY_CODE", "status_for", "status_for_http"]

_S = grpc.StatusCode

STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    "ok": _S.OK,
    "fail_open": _S.OK,
    "approval_required": _S.FAILED_PRECONDITION,
    # the caller cancelled the call (or went away) before it ended: still one audit record
    "cancelled": _S.CANCELLED,
    # request
    "request_too_large": _S.INVALID_ARGUMENT,
    # an HTTP body the sender cut short, or stopped sending (sidecar/aiohttpserve.py)
    "incomplete_body": _S.INVALID_ARGUMENT,
    "request_timeout": _S.INVALID_ARGUMENT,
    "malformed_request": _S.INVALID_ARGUMENT,
    "invalid_arguments": _S.INVALID_ARGUMENT,
    "input_unrepresentable": _S.INVALID_ARGUMENT,
    "unknown_tool": _S.NOT_FOUND,
    "unknown_model": _S.NOT_FOUND,
    # a model alias reached through an API its configuration does not allow (model_apis/)
    "wrong_model_api": _S.INVALID_ARGUMENT,
    # embeddings input as token arrays: unreadable, so unclassifiable (model_apis/embeddings.py)
    "unclassifiable_input": _S.INVALID_ARGUMENT,
    # an MCP method the sidecar does not serve (sidecar/mcp/methods.py)
    "method_not_allowed": _S.UNIMPLEMENTED,
    # model token budgets (sidecar/budgets.py), enforced whatever policy says
    "budget_exceeded": _S.RESOURCE_EXHAUSTED,
    # identity: the caller could not be attested (sidecar/identity/)
    "unauthenticated": _S.UNAUTHENTICATED,
    "invalid_spiffe_id": _S.UNAUTHENTICATED,
    "missing_credentials": _S.UNAUTHENTICATED,
    "jwt_malformed": _S.UNAUTHENTICATED,
    "jwt_bad_algorithm": _S.UNAUTHENTICATED,
    "jwt_bad_type": _S.UNAUTHENTICATED,
    "jwt_missing_kid": _S.UNAUTHENTICATED,
    "jwt_missing_claim": _S.UNAUTHENTICATED,
    "jwt_bad_subject": _S.UNAUTHENTICATED,
    "jwt_unknown_kid": _S.UNAUTHENTICATED,
    "jwt_bad_signature": _S.UNAUTHENTICATED,
    "jwt_expired": _S.UNAUTHENTICATED,
    "jwt_not_yet_valid": _S.UNAUTHENTICATED,
    "jwt_audience_mismatch": _S.UNAUTHENTICATED,
    "jwt_invalid": _S.UNAUTHENTICATED,
    "untrusted_domain": _S.UNAUTHENTICATED,
    "invalid_svid": _S.UNAUTHENTICATED,
    "svid_expired": _S.UNAUTHENTICATED,
    "identity_not_ready": _S.UNAVAILABLE,
    "delegation_invalid": _S.UNAUTHENTICATED,
    # the user an agent acts for: its token does not verify (sidecar/users/)
    "user_token_malformed": _S.UNAUTHENTICATED,
    "user_token_bad_algorithm": _S.UNAUTHENTICATED,
    "user_token_untrusted_issuer": _S.UNAUTHENTICATED,
    "user_token_unknown_kid": _S.UNAUTHENTICATED,
    "user_token_bad_signature": _S.UNAUTHENTICATED,
    "user_token_expired": _S.UNAUTHENTICATED,
    "user_token_not_yet_valid": _S.UNAUTHENTICATED,
    "user_token_audience_mismatch": _S.UNAUTHENTICATED,
    "user_token_missing_claim": _S.UNAUTHENTICATED,
    "user_token_invalid": _S.UNAUTHENTICATED,
    "user_token_unexpected": _S.UNAUTHENTICATED,
    "user_issuer_unavailable": _S.UNAVAILABLE,
    # tasks (sidecar/tasks.py)
    "invalid_task": _S.INVALID_ARGUMENT,
    "task_unknown": _S.PERMISSION_DENIED,
    "task_ended": _S.PERMISSION_DENIED,
    # step-up approvals (sidecar/approvals/)
    "approval_unknown": _S.PERMISSION_DENIED,
    "approval_mismatch": _S.PERMISSION_DENIED,
    "approval_denied": _S.PERMISSION_DENIED,
    "approval_used": _S.PERMISSION_DENIED,
    "approval_expired": _S.PERMISSION_DENIED,
    "approval_revoked": _S.PERMISSION_DENIED,
    "approval_rate_limited": _S.RESOURCE_EXHAUSTED,
    "state_unavailable": _S.UNAVAILABLE,
    # enforcement and relay
    "credential_unavailable": _S.UNAVAILABLE,
    "deadline_exceeded": _S.DEADLINE_EXCEEDED,
    "upstream_unavailable": _S.UNAVAILABLE,
    "upstream_timeout": _S.UNAVAILABLE,
    "upstream_response_too_large": _S.RESOURCE_EXHAUSTED,
    "upstream_bad_response": _S.UNAVAILABLE,
    "upstream_stream_interrupted": _S.UNAVAILABLE,
    # (its status on the wire is the upstream's HTTP status mapped by status_for_http)
    "upstream_error": _S.UNAVAILABLE,
    "audit_unavailable": _S.UNAVAILABLE,
    "internal_error": _S.INTERNAL,
    # A2A outbound (docs/a2a.md)
    "unknown_peer": _S.NOT_FOUND,
    "peer_card_changed": _S.FAILED_PRECONDITION,
    "peer_card_unverified": _S.FAILED_PRECONDITION,
    "peer_unavailable": _S.UNAVAILABLE,
    # the peer's TLS server is not its configured spiffe_id (sidecar/a2a/peer_tls.py)
    "peer_identity_mismatch": _S.UNAVAILABLE,
    "peer_timeout": _S.DEADLINE_EXCEEDED,
    "peer_bad_response": _S.UNAVAILABLE,
    "peer_response_too_large": _S.RESOURCE_EXHAUSTED,
    "message_too_large": _S.RESOURCE_EXHAUSTED,
    # an A2A request the binding cannot carry: a 0.3 method to an HTTP+JSON peer, a REST
    # request to the JSON-RPC-only inbound listener (sidecar/a2a/rest_binding.py)
    "binding_unsupported": _S.UNIMPLEMENTED,
    # A2A inbound and provenance (docs/a2a.md "Inbound", "Provenance")
    "caller_unverified": _S.UNAUTHENTICATED,
    "inbound_denied": _S.PERMISSION_DENIED,
    "txn_token_invalid": _S.UNAUTHENTICATED,
    "txn_ended": _S.PERMISSION_DENIED,
    "task_not_owned": _S.NOT_FOUND,
    # a local agent owning a2a_peers.PEER.max_owned_per_agent ids there invents a contextId
    "task_ownership_limit": _S.RESOURCE_EXHAUSTED,
    "list_tasks_refused": _S.PERMISSION_DENIED,
    "skill_mismatch": _S.INVALID_ARGUMENT,
    "agent_unavailable": _S.UNAVAILABLE,
    "agent_timeout": _S.DEADLINE_EXCEEDED,
    # more message.referenceTaskIds than one request may name (sidecar/a2a/inbound_request.py)
    "too_many_references": _S.RESOURCE_EXHAUSTED,
    # an inbound allow whose obligations the listener cannot apply (sidecar/calls/a2a_inbound.py)
    "obligation_unsupported": _S.FAILED_PRECONDITION,
    # an agent answer redact_response cannot read (not JSON-RPC): not passed on
    "agent_bad_response": _S.UNAVAILABLE,
}
# Every policy failure, and policy's own deny, is PERMISSION_DENIED.
for _code in DECISION_CODES:
    STATUS_BY_CODE.setdefault(_code, _S.PERMISSION_DENIED)

_HTTP: dict[int, grpc.StatusCode] = {
    400: _S.INVALID_ARGUMENT,
    401: _S.PERMISSION_DENIED,  # the sidecar's credential was refused, not the agent's identity
    403: _S.PERMISSION_DENIED,
    404: _S.NOT_FOUND,
    409: _S.ABORTED,
    412: _S.FAILED_PRECONDITION,
    422: _S.INVALID_ARGUMENT,
    429: _S.RESOURCE_EXHAUSTED,
    501: _S.UNIMPLEMENTED,
}


def status_for(code: str) -> grpc.StatusCode:
    return STATUS_BY_CODE[code]


def status_for_http(status: int) -> grpc.StatusCode:
    """The gRPC status an upstream's non-2xx HTTP answer is relayed as."""
    if status in _HTTP:
        return _HTTP[status]
    if 500 <= status <= 599:
        return _S.UNAVAILABLE
    return _S.FAILED_PRECONDITION  # other 4xx, and 3xx (redirects are never followed)
