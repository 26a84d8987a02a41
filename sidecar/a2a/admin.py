"""The A2aCards admin service: list peer agent cards against their pins, and accept a changed
one (audited first: an accept that cannot be audited does not happen). Served on the
approvals listener, behind its authentication, like McpDefinitions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from sidecar._proto.agentsidecar.v1 import a2a_pb2, a2a_pb2_grpc
from sidecar.a2a.cards import CardBook, PinnedCard
from sidecar.a2a.errors import CardError
from sidecar.approvals.admin import authenticated
from sidecar.audit import AuditError, AuditSink
from sidecar.state import StateError
from sidecar.state.offloop import off_loop

__all__ = ["A2aCardsService", "register"]

log = logging.getLogger(__name__)

Authenticate = Callable[[grpc.aio.ServicerContext], str]


def _message(view: PinnedCard | CardError) -> a2a_pb2.PeerCard:
    if isinstance(view, CardError):
        return a2a_pb2.PeerCard(
            peer=getattr(view, "peer", ""), error=view.code, error_message=str(view)
        )
    return a2a_pb2.PeerCard(
        peer=view.peer,
        digest=view.digest,
        pinned_digest=view.pinned_digest,
        changed=view.changed,
        signed=view.signed,
        signer=view.signer,
        pinned_by=view.pinned_by,
        pinned_at_ns=view.pinned_ns,
        skills=list(view.skills),
        card_json=json.dumps(view.current, sort_keys=True),
    )


class A2aCardsService(a2a_pb2_grpc.A2aCardsServicer):
    def __init__(self, book: CardBook, authenticate: Authenticate, audit: AuditSink) -> None:
        self._book = book
        self._authenticate = authenticate
        self._audit = audit

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await authenticated(self._authenticate, context)
        views = await self._book.list()
        if request.changed_only:
            views = [v for v in views if isinstance(v, CardError) or v.changed]
        return a2a_pb2.ListCardsResponse(cards=[_message(v) for v in views])

    async def Accept(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        operator = await authenticated(self._authenticate, context)
        if not request.peer or not request.digest or not request.reason.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "peer, digest and reason are required"
            )
        if request.peer not in self._book.peers:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no A2A peer {request.peer!r} is configured"
            )
        try:
            view = await self._book.refresh(request.peer)
        except CardError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc.code}: {exc}")
            raise AssertionError("unreachable") from exc
        if view.digest != request.digest:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the card of {request.peer} is now {view.digest}, not the {request.digest} "
                "you reviewed: review it again",
            )
        now = time.time_ns()
        record = {
            "record_version": 1,
            "type": "a2a_card",
            "time": datetime.fromtimestamp(now / 1e9, UTC).isoformat(),
            "time_ns": now,
            "event": "accepted",
            "peer": request.peer,
            "card_digest": view.digest,
            "previous_card_digest": view.pinned_digest,
            "skills": list(view.current_skills()),
            "signer": view.signer,
            "actor": operator,
            "reason": request.reason.strip()[:1000],
        }
        try:
            await off_loop(self._audit.write, record)
            # Exactly the card reviewed and audited is pinned (content-addressed): a refresh
            # after the audit record cannot make the accept fail or pin another card.
            accepted, _ = await self._book.accept(
                request.peer, request.digest, operator, reviewed=view.current
            )
        except (AuditError, StateError) as exc:
            code = "audit_unavailable" if isinstance(exc, AuditError) else "state_unavailable"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{code}: {exc}")
            raise AssertionError("unreachable") from exc
        except CardError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc.code}: {exc}")
            raise AssertionError("unreachable") from exc
        log.info("A2A peer card accepted", extra={"peer": request.peer, "actor": operator})
        return _message(accepted)


def register(book: CardBook, audit: AuditSink) -> Callable[[grpc.aio.Server, Authenticate], None]:
    """The service for ``AdminServer.add_service`` (sidecar/app.py)."""

    def add(server: grpc.aio.Server, authenticate: Authenticate) -> None:
        a2a_pb2_grpc.add_A2aCardsServicer_to_server(
            A2aCardsService(book, authenticate, audit), server
        )

    return add
