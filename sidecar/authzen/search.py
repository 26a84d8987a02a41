"""The AuthZEN 1.0 search APIs: which subjects, resources or actions the policy permits,
found by evaluating each candidate of the catalog exactly as a single evaluation would (the
same mapping, the same decide-only path, one audit record each).

``subject`` search enumerates agents (the SPIFFE IDs the policy's data names), ``resource``
search the catalog's resources of the asked type, ``action`` search the four verbs. A result
is a candidate whose evaluation is ``decision: true``; ``step_up`` and errors are not results.

Pages: at most ``limit`` results (clamped to ``max_evaluations``), and at most
``max_evaluations`` candidates evaluated per request. ``page.next_token`` says where the next
request resumes; it is MACed with a key of this process and bound to the endpoint, the caller
and every other byte of the request, and expires: a token that was altered, forged, replayed
with another subject, resource, action, context or limit, by another caller, or after a
restart is refused (400). It only ever names a position: every result is evaluated anew.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.authzen.catalog import RESOURCE_TYPES, Catalog
from sidecar.authzen.mapping import (
    VERBS,
    AuthZenRequestError,
    EvaluationError,
    find_resource,
    parse_subject,
)

__all__ = ["KINDS", "PageTokens", "SearchError", "search"]

KINDS = ("subject", "resource", "action")
TOKEN_TTL_S = 900
_MAX_TOKEN = 512

Decide = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SearchError(AuthZenRequestError):
    """The search request as a whole cannot be answered: this HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Candidate:
    entity: dict[str, Any]  # what the result says
    request: dict[str, Any]  # the single evaluation that decides it


class PageTokens:
    """Opaque page tokens: ``offset.expiry.mac``, the MAC over the request's binding."""

    def __init__(self, key: bytes | None = None, ttl_s: float = TOKEN_TTL_S) -> None:
        self._key = key or secrets.token_bytes(32)
        self._ttl_s = ttl_s

    def issue(self, binding: str, offset: int) -> str:
        expires = int(time.time() + self._ttl_s)
        body = f"{offset}.{expires}"
        return f"{body}.{self._mac(binding, body)}"

    def open(self, token: Any, binding: str) -> int:
        """The offset ``token`` names for this exact request, or :class:`SearchError`."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
            raise SearchError(400, "page.token must be a next_token this PDP returned")
        parts = token.split(".")
        if len(parts) != 3 or not all(p.isdigit() and len(p) <= 12 for p in parts[:2]):
            raise SearchError(400, "page.token is not a token this PDP issued")
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(parts[2], self._mac(binding, body)):
            raise SearchError(
                400,
                "page.token does not match this request (issued for another request, caller "
                "or endpoint, altered, or before a restart): start again without a token",
            )
        if int(parts[1]) < time.time():
            raise SearchError(400, "page.token has expired: start again without a token")
        return int(parts[0])

    def _mac(self, binding: str, body: str) -> str:
        digest = hmac.new(self._key, f"{binding}|{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def binding_of(kind: str, body: Mapping[str, Any], caller: str) -> str:
    """What a page token is bound to: the endpoint, the caller and the request but its token."""
    page = body.get("page")
    rest = dict(body)
    if isinstance(page, dict):
        rest["page"] = {k: v for k, v in page.items() if k != "token"}
    canonical = json.dumps([kind, caller, rest], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def page_limit(body: Mapping[str, Any], maximum: int) -> int:
    page = body.get("page", {})
    if not isinstance(page, dict):
        raise SearchError(400, "page must be an object")
    limit = page.get("limit", maximum)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SearchError(400, "page.limit must be a positive integer")
    return min(limit, maximum)


async def search(
    kind: str,
    body: Mapping[str, Any],
    *,
    catalog: Catalog,
    subjects: Callable[[], list[str]],
    caller: str,
    tokens: PageTokens,
    max_evaluations: int,
    decide: Decide,
) -> dict[str, Any]:
    """One page of a search: its results and ``page`` (``next_token`` empty at the end)."""
    limit = page_limit(body, max_evaluations)
    binding = binding_of(kind, body, caller)
    page = body.get("page") or {}
    offset = tokens.open(page["token"], binding) if "token" in page else 0
    candidates = _candidates(kind, body, catalog, subjects)
    results: list[dict[str, Any]] = []
    position = offset
    while position < len(candidates) and len(results) < limit:
        if position - offset >= max_evaluations:
            break
        candidate = candidates[position]
        position += 1
        answer = await decide(candidate.request)
        if answer.get("decision") is True:
            results.append(candidate.entity)
    more = position < len(candidates)
    next_token = tokens.issue(binding, position) if more else ""
    return {"page": {"next_token": next_token, "count": len(results)}, "results": results}


def _candidates(
    kind: str, body: Mapping[str, Any], catalog: Catalog, subjects: Callable[[], list[str]]
) -> list[_Candidate]:
    """Each candidate with the single evaluation that decides it; the fixed entities are
    checked first (a malformed subject or an unknown resource fails the whole search)."""
    context = body.get("context")
    fixed = {"context": context} if context is not None else {}
    if kind == "subject":
        resource, action = _entity(body, "resource"), _entity(body, "action")
        template = _entity(body, "subject")
        if template.get("type") != "agent":
            raise SearchError(
                400,
                'subject search finds agents: subject.type must be "agent" (there is no '
                "directory of users to search)",
            )
        _check(lambda: find_resource(resource, catalog))
        _check_verb(action)
        properties = template.get("properties")
        extra = {"properties": properties} if properties is not None else {}
        return [
            _Candidate(
                {"type": "agent", "id": sid},
                {
                    "subject": {"type": "agent", "id": sid, **extra},
                    "resource": resource,
                    "action": action,
                    **fixed,
                },
            )
            for sid in subjects()
        ]
    if kind == "resource":
        subject, action = _entity(body, "subject"), _entity(body, "action")
        template = _entity(body, "resource")
        _check(lambda: parse_subject(subject))
        _check_verb(action)
        rtype = template.get("type")
        if rtype not in RESOURCE_TYPES:
            raise SearchError(400, f"resource.type must be one of {', '.join(RESOURCE_TYPES)}")
        properties = template.get("properties")
        extra = {"properties": properties} if properties is not None else {}
        return [
            _Candidate(
                {"type": rtype, "id": entry.id},
                {
                    "subject": subject,
                    "resource": {"type": rtype, "id": entry.id, **extra},
                    "action": action,
                    **fixed,
                },
            )
            for entry in catalog.entries(rtype)
        ]
    subject, resource = _entity(body, "subject"), _entity(body, "resource")
    _check(lambda: parse_subject(subject))
    _check(lambda: find_resource(resource, catalog))
    return [
        _Candidate(
            {"name": verb},
            {"subject": subject, "resource": resource, "action": {"name": verb}, **fixed},
        )
        for verb in VERBS
    ]


def _entity(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise SearchError(400, f"{key} is required and must be an object")
    return value


def _check(parse: Callable[[], object]) -> None:
    try:
        parse()
    except EvaluationError as exc:
        raise SearchError(exc.status, str(exc)) from exc


def _check_verb(action: Mapping[str, Any]) -> None:
    if action.get("name") not in VERBS:
        raise SearchError(400, "action.name must be call, read, act or delegate")
