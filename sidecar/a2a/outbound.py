"""The agent's loopback A2A endpoint (``a2a.listen``): each configured peer's pinned card,
rewritten to point here, and JSON-RPC to the peer, every request one guarded call
(sidecar/calls/a2a.py) with one audit record (docs/a2a.md "Outbound").

Routes: ``GET /peers/PEER/.well-known/agent-card.json`` (the pinned card, every interface at
``http://A2A_LISTEN/peers/PEER``) and ``POST /peers/PEER`` (A2A JSON-RPC, 1.0 and 0.3
names; SSE for ``SendStreamingMessage``/``message/stream`` and ``SubscribeToTask``/
``tasks/resubscribe``). The caller is attested as on the other loopback endpoints (identity
mode pod, static or jwt: the client's ``Authorization`` carries its JWT-SVID), which is
never passed to the peer. The sidecar's own facts come in headers the peer never sees:
``X-Agent-Sidecar-Task``, ``X-Agent-Sidecar-Intent``, ``X-Agent-Sidecar-Approval``.
A card GET is attested and audited like a POST (an unattested caller learns nothing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web

from sidecar.a2a import protocol
from sidecar.a2a.agent_call import agent_call
from sidecar.a2a.cards import CardBook, build_cards
from sidecar.a2a.errors import A2aError, A2aProtocolError, CardError
from sidecar.a2a.peer_tasks import PeerTaskLedger, PeerTasks
from sidecar.a2a.redact import ArtifactStreams, redact_message, redact_parts
from sidecar.a2a.relay import PeerRelay
from sidecar.a2a.rest_binding import HTTP_JSON, binding_of, to_rest
from sidecar.a2a.settings import A2aPeerSettings, peer_target
from sidecar.a2a.sse_split import sse_event
from sidecar.aiohttpserve import BodyError, HttpServer, bind_tcp, call_context, read_body
from sidecar.audit import CallRecord
from sidecar.calls.a2a import A2aCall, A2aCalls, AnswerStream, PeerCard, PeerFailure
from sidecar.calls.common import CallResult, Facts, off_loop
from sidecar.calls.guarded import GuardedPath
from sidecar.classify import StreamRedactor
from sidecar.config import Settings
from sidecar.state import StateDb

__all__ = ["A2aOutbound", "PeerPort"]

log = logging.getLogger(__name__)

PREFIX = "/peers/"
CARD_SUFFIX = "/.well-known/agent-card.json"
TASK_HEADER = "X-Agent-Sidecar-Task"
INTENT_HEADER = "X-Agent-Sidecar-Intent"
APPROVAL_HEADER = "X-Agent-Sidecar-Approval"
NOT_WAITING = "a2a.wait_for_approval_s is 0: the sidecar does not wait for an approver"
# What the agent's step-up answer says in data.code (its audit code is approval_required).
STEP_UP_REQUIRED = "step_up_required"
# A2A's TaskNotFoundError: another local agent's task at the peer is not this agent's
# (task_not_owned, peer_tasks.py); its SDK raises what it would for a task the peer lacks.
TASK_NOT_FOUND = -32001

_S = grpc.StatusCode
_RPC_BY_STATUS: dict[grpc.StatusCode, int] = {
    _S.PERMISSION_DENIED: protocol.DENIED,
    _S.FAILED_PRECONDITION: protocol.APPROVAL_REQUIRED,
    _S.UNAUTHENTICATED: protocol.UNAUTHENTICATED,
    _S.UNAVAILABLE: protocol.UNAVAILABLE,
    _S.DEADLINE_EXCEEDED: protocol.DEADLINE_EXCEEDED,
    _S.RESOURCE_EXHAUSTED: protocol.RESOURCE_EXHAUSTED,
    _S.INVALID_ARGUMENT: protocol.INVALID_PARAMS,
    _S.NOT_FOUND: protocol.INVALID_PARAMS,
    _S.CANCELLED: protocol.UNAVAILABLE,
    _S.INTERNAL: protocol.INTERNAL_ERROR,
    _S.UNIMPLEMENTED: protocol.METHOD_NOT_FOUND,  # binding_unsupported (rest_binding.py)
}


class PeerPort:
    """One configured peer as the guarded call sees it (sidecar/calls/a2a.py ``Peer``)."""

    def __init__(
        self,
        name: str,
        settings: A2aPeerSettings,
        relay: PeerRelay,
        cards: CardBook,
        state: StateDb | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.target = peer_target(name)
        self.timeout_s = settings.timeout_s
        self._relay = relay
        self._cards = cards
        # Which local agent owns which task here (no store: every named task is refused).
        self.tasks = PeerTasks(name, state, settings.max_owned_per_agent)
        # A3's ProvenanceBinder (sidecar/a2a/provenance.py), when the inbound side is on.
        self.provenance: Any = None
        # Where the agent reaches this peer through the sidecar (set once the port is bound).
        self.agent_url = ""

    async def card_facts(self) -> PeerCard:
        """The pinned card's facts and its wire binding (rest_binding.py), both for this
        call only: a card accepted while the call waits changes neither."""
        try:
            view = await self._cards.card_for(self.name)
        except CardError as exc:
            raise PeerFailure(str(exc), code=exc.outcome, reached=False) from exc
        binding = binding_of(self.settings.binding, view.card)  # binding_unsupported: refused
        return PeerCard(view.policy_input(), binding)

    def exchange(
        self, body: dict[str, Any], headers: Mapping[str, str], *, stream: bool, binding: str
    ) -> AsyncIterator[dict[str, Any]]:
        version = protocol.METHODS[body["method"]][1]
        return self._relay.exchange(
            self.name, body, version=version, headers=headers, stream=stream, binding=binding
        )

    def redact_request(self, params: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
        return redact_parts(params, classes)

    def redact_answer(self, message: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
        return redact_message(message, classes)

    def answer_stream(self, new: Callable[[], StreamRedactor]) -> AnswerStream:
        return ArtifactStreams(new)

    def task_ledger(self, subject: str, call: A2aCall, binding: str) -> PeerTaskLedger:
        """The call's task ownership; a request the card's binding cannot carry (a hostile
        id in a REST path) is refused as malformed before it is refused as not owned."""

        def shape() -> None:
            if binding == HTTP_JSON and call.version == "1.0":
                to_rest(call.body(call.params), call.a2a_operation, call.version)

        return self.tasks.ledger(subject, call, shape)

    def checked_answer(self, a2a_operation: str, message: dict[str, Any]) -> dict[str, Any]:
        """The extended card checked, verified and projected like the public card (cards.py)
        before anything redacts it; its only interface is here, or the agent would bypass
        the sidecar. A refused card ends the call with its outcome (on the audit record)."""
        if a2a_operation != "extended_card" or "result" not in message:
            return message
        try:
            extended = self._cards.extended_for_agent(
                self.name, message.get("result"), self.agent_url
            )
        except CardError as exc:
            # The call ends with its outcome (the audit and metrics code); the card's own
            # reason (card_malformed, card_unsigned, ...) is named in the message.
            raise PeerFailure(f"{exc} ({exc.code})", code=exc.outcome, reached=True) from exc
        return message | {"result": extended}

    async def provenance_headers(self, record: CallRecord, facts: Facts) -> dict[str, str]:
        """The ``Txn-Token`` of the task the call runs under (minted here when the agent
        started the task, narrowed when an inbound call opened it); none outside a task or
        without the inbound side. A task whose transaction ended refuses the call."""
        if self.provenance is None or facts.task is None:
            return {}
        try:
            return await off_loop(
                self.provenance.outbound_headers, facts.task, self.settings.spiffe_id
            )
        except A2aError as exc:  # txn_ended, txn_token_invalid
            raise PeerFailure(str(exc), code=exc.code, reached=False) from exc


def _json(
    status: int, body: dict[str, Any], decision_id: str = "", encoded: bytes = b""
) -> web.Response:
    """One JSON answer; ``encoded``: ``body`` already encoded (the call's answer, as audited)."""
    headers = {"Content-Type": "application/json", "Server": "agent-sidecar"}
    if decision_id:
        headers["x-agent-sidecar-decision-id"] = decision_id
    return web.Response(status=status, body=encoded or protocol.dumps(body), headers=headers)


def _http_error(status: int, code: str, message: str) -> web.Response:
    return _json(status, protocol.rpc_error(None, protocol.INVALID_REQUEST, message, code))


def refusal(rpc_id: Any, result: CallResult) -> dict[str, Any]:
    """The JSON-RPC answer for a call that did not end with the peer's result: the peer's
    own error (cleaned), or the sidecar's with its stable code, decision id and reasons."""
    if result.rpc_error is not None:
        return result.rpc_error
    extra: dict[str, Any] = {}
    code = result.code
    if result.decision is not None and result.decision.reasons:
        extra["reasons"] = list(result.decision.reasons)
    if result.approval_id:
        extra["approval_id"] = result.approval_id
        if result.approval_url:
            extra["approval_url"] = result.approval_url
        if code == "approval_required":
            code = STEP_UP_REQUIRED
    rpc_code = _RPC_BY_STATUS.get(result.status, protocol.DENIED)
    if rpc_code == protocol.APPROVAL_REQUIRED and code != STEP_UP_REQUIRED:
        rpc_code = protocol.DENIED  # a changed or unverified card: no approval to wait for
    if code == "task_not_owned":
        rpc_code = TASK_NOT_FOUND
    return protocol.rpc_error(
        rpc_id,
        rpc_code,
        result.message or result.code,
        code,
        decision_id=result.decision_id,
        extra=extra,
    )


class A2aOutbound:
    """The loopback endpoint, its peers' relay and their cards. One per sidecar."""

    def __init__(
        self,
        settings: Settings,
        path: GuardedPath,
        state: Any,
        identity: Any,
        *,
        cards: CardBook | None = None,
    ) -> None:
        self._settings = settings
        self._config = settings.a2a
        peers = settings.a2a_peers
        self.relay = PeerRelay(
            peers,
            identity=identity,
            max_concurrency=settings.relay.max_concurrency,
            per_peer=settings.relay.per_target,
        )
        self.cards = cards if cards is not None else build_cards(settings, state, identity)
        self.calls = A2aCalls(path, self.relay.gate)
        self._peers = {
            name: PeerPort(name, peer, self.relay, self.cards, state)  # type: ignore[arg-type]
            for name, peer in peers.items()
        }
        host, _, port = self._config.listen.rpartition(":")
        sock = bind_tcp(host.strip("[]"), int(port))
        self.base_url = f"http://{host}:{sock.getsockname()[1]}"
        for name, port in self._peers.items():
            port.agent_url = self.peer_url(name)
        self._server = HttpServer(
            sock,
            self._handle,
            max_connections=self._config.max_connections,
            idle_timeout_s=self._config.read_timeout_s,
            error_response=_http_error,
            cancel_on_disconnect=True,
        )

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def peers(self) -> Mapping[str, PeerPort]:
        """The configured peers (shared with the gRPC API's CallPeer, grpc_calls.py)."""
        return self._peers

    def use_provenance(self, binder: Any) -> None:
        """Give every peer call the inbound side's transaction tokens (A3's binder)."""
        for peer in self._peers.values():
            peer.provenance = binder

    def peer_url(self, peer: str) -> str:
        return f"{self.base_url}{PREFIX}{peer}"

    async def start(self) -> None:
        await self._server.start()
        log.info("A2A endpoint listening", extra={"address": self.base_url})

    async def stop(self) -> None:
        await self._server.stop()
        await self.relay.close()
        if self.cards is not None:
            await self.cards.aclose()

    def close(self) -> None:
        self._server.close()

    # --- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if not path.startswith(PREFIX):
            return _http_error(404, "not_found", "the A2A endpoints are /peers/PEER")
        rest = path[len(PREFIX) :]
        if rest.endswith(CARD_SUFFIX) and request.method == "GET":
            return await self._card(rest[: -len(CARD_SUFFIX)], request)
        if "/" in rest.rstrip("/"):
            return _http_error(404, "not_found", "the A2A endpoints are /peers/PEER")
        if request.method != "POST":
            response = _http_error(405, "method_not_allowed", "POST (JSON-RPC) or GET the card")
            response.headers["Allow"] = "GET, POST"
            return response
        return await self._post(rest.rstrip("/"), request)

    async def _card(self, name: str, request: web.BaseRequest) -> web.Response:
        if name not in self._peers or self.cards is None:
            return _http_error(404, "unknown_peer", f"no A2A peer {name[:64]!r} is configured")
        cards = self.cards
        peer_url = self.peer_url(name)

        async def fetch() -> dict[str, Any]:
            try:
                view = await cards.card_for(name)
            except CardError as exc:
                raise PeerFailure(str(exc), code=exc.outcome, reached=False) from exc
            return view.for_agent(peer_url)

        context = call_context(request, self._settings.users.header)
        result = await self.calls.card(name, context, fetch)
        if result.code == "ok" and result.answer is not None:
            return _json(200, result.answer, result.decision_id)
        status = 401 if result.status == grpc.StatusCode.UNAUTHENTICATED else 502
        body = protocol.rpc_error(
            None,
            _RPC_BY_STATUS.get(result.status, protocol.DENIED),
            result.message or result.code,
            result.code,
            decision_id=result.decision_id,
        )
        return _json(status, body, result.decision_id)

    async def _post(self, name: str, request: web.BaseRequest) -> web.StreamResponse:
        peer = self._peers.get(name)
        if peer is None:
            message = f"no A2A peer {name[:64]!r} is configured"
            result = await self.calls.reject("A2A message", "unknown_peer", message)
            body = protocol.rpc_error(
                None,
                protocol.INVALID_PARAMS,
                message,
                "unknown_peer",
                decision_id=result.decision_id,
            )
            return _json(404, body, result.decision_id)
        kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _http_error(415, "unsupported_media_type", "Content-Type: application/json")
        limit = peer.settings.max_message_bytes
        try:
            raw = await read_body(request, limit, self._config.read_timeout_s)
        except BodyError as exc:
            code = "message_too_large" if exc.status == 413 else "malformed_request"
            result = await self.calls.reject("A2A message", code, str(exc))
            body = protocol.rpc_error(
                None,
                protocol.RESOURCE_EXHAUSTED if exc.status == 413 else protocol.INVALID_REQUEST,
                str(exc),
                code,
                decision_id=result.decision_id,
            )
            return _json(exc.status, body, result.decision_id)
        try:
            parsed = protocol.parse_request(raw, max_bytes=limit)
        except A2aProtocolError as exc:
            result = await self.calls.reject("A2A message", exc.audit_code, str(exc))
            body = protocol.rpc_error(
                _request_id(raw), exc.rpc_code, str(exc), exc.code, decision_id=result.decision_id
            )
            return _json(200, body, result.decision_id)
        call = self._call(parsed, peer, request)
        return await self._serve(call, peer, request)

    def _call(
        self, parsed: protocol.A2aRequest, peer: PeerPort, request: web.BaseRequest
    ) -> A2aCall:
        wait = self._config.wait_for_approval_s
        return agent_call(  # shared with the gRPC API (grpc_calls.py): one policy input
            parsed,
            peer.settings,
            task_id=request.headers.get(TASK_HEADER, ""),
            intent=request.headers.get(INTENT_HEADER, ""),
            approval_id=request.headers.get(APPROVAL_HEADER, ""),
            no_wait=NOT_WAITING if wait == 0 else False,
            time_remaining=None if wait == 0 else wait + peer.timeout_s,
        )

    async def _serve(
        self, call: A2aCall, peer: PeerPort, request: web.BaseRequest
    ) -> web.StreamResponse:
        context = call_context(request, self._settings.users.header)
        stream: web.StreamResponse | None = None

        async def emit(message: dict[str, Any]) -> None:
            nonlocal stream
            if stream is None:
                stream = web.StreamResponse(
                    status=200,
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-store",
                        "Server": "agent-sidecar",
                    },
                )
                await stream.prepare(request)
            await stream.write(_event(message))

        result = await self.calls.call(call, peer, context=context, emit=emit)
        if stream is not None:  # the stream has begun: its end is one more event
            if result.code != "ok" and result.rpc_error is None:  # the peer's was streamed
                await stream.write(_event(refusal(call.rpc_id, result)))
            await stream.write_eof()
            return stream
        if result.code == "ok" and result.answer is not None:
            return _json(200, result.answer, result.decision_id, result.upstream_body)
        return _json(200, refusal(call.rpc_id, result), result.decision_id)


def _event(message: dict[str, Any]) -> bytes:
    return sse_event(protocol.dumps(message))  # U+2028 and the like escaped: sse_split.py


def _request_id(raw: bytes) -> Any:
    """The id of a request refused for its shape, when one can be read (else null)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(value, str) and len(value) <= protocol.MAX_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
