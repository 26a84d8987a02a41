"""The gRPC API's second door to the peers: ``CallPeer`` (unary A2A operations) and
``StreamPeer`` (SendStreamingMessage, SubscribeToTask), docs/a2a.md "Through the gRPC API".

Nothing here decides or relays: the request is read by the loopback endpoint's own parser
(protocol.parse_request over the JSON-RPC body the agent would have posted there), made into
the same ``A2aCall`` (agent_call.py), and run by the same guarded call (``A2aCalls``) against
the same peer ports (outbound.py ``PeerPort``: pinned card, relay, redaction, provenance).
So the two doors give policy one input, write one audit record per call, refuse with the same
codes and redact alike; only the framing differs (protobuf messages instead of JSON-RPC).

Wire: the sidecar's refusals are non-OK statuses with a ``CallError`` (as CallTool's); the
peer's own A2A error is an answer (``error_json``), as the loopback endpoint answers it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import message as protobuf_message

from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.a2a import protocol
from sidecar.a2a.agent_call import agent_call
from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.outbound import PeerPort
from sidecar.a2a.provenance import ProvenanceBinder
from sidecar.a2a.relay import PeerRelay
from sidecar.calls.a2a import A2aCall, A2aCalls
from sidecar.calls.common import CallResult
from sidecar.calls.guarded import GuardedPath
from sidecar.ids import new_decision_id
from sidecar.service import abort, call_context, decision_message
from sidecar.stream_bridge import InFlight, StreamBridge, finish
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["PeerApi", "worker_binder"]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class PeerApi:
    """CallPeer and StreamPeer over the configured peers' guarded calls (one per worker)."""

    def __init__(
        self,
        calls: A2aCalls,
        peers: Mapping[str, PeerPort],
        path: GuardedPath,
        *,
        max_request_bytes: int,
        relay: PeerRelay | None = None,
    ) -> None:
        self._calls = calls
        self._peers = peers
        self._path = path  # refusals before a call exists (audited)
        self._max = max_request_bytes
        self._relay = relay  # owned only when no loopback endpoint shares its own
        self._streams = InFlight()  # StreamPeer's calls, drained by aclose

    @classmethod
    def for_worker(
        cls,
        settings: Any,
        path: GuardedPath,
        *,
        cards: Any,
        identity: Any,
        outbound: Any = None,
        provenance: Any = None,
        state: Any = None,
    ) -> PeerApi:
        """The API over ``outbound``'s peers (its relay, pools and concurrency slots: one
        budget for both doors), or, in a worker without the loopback endpoint, over peers of
        its own built from the same settings. ``provenance``: the ProvenanceBinder that gives
        calls under a task their Txn-Token; ``state``: the store recording which local agent
        owns which peer task (peer_tasks.py; without it every named task is refused)."""
        limit = settings.server.max_request_bytes
        if outbound is not None:
            api = cls(outbound.calls, outbound.peers, path, max_request_bytes=limit)
        else:
            relay = PeerRelay(
                settings.a2a_peers,
                identity=identity,
                max_concurrency=settings.relay.max_concurrency,
                per_peer=settings.relay.per_target,
            )
            peers = {
                name: PeerPort(name, peer, relay, cards, state)
                for name, peer in settings.a2a_peers.items()
            }
            api = cls(A2aCalls(path, relay.gate), peers, path, max_request_bytes=limit, relay=relay)
        if provenance is not None:
            for peer in api._peers.values():
                peer.provenance = provenance
        return api

    async def aclose(self) -> None:
        """After the gRPC server stopped: streamed calls end (audited), then the relay closes."""
        await self._streams.drain()
        if self._relay is not None:
            await self._relay.close()

    # --- handlers -------------------------------------------------------------------------

    async def call_peer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        call, peer = await self._prepare("CallPeer", raw, context, streaming=False)
        result = await self._calls.call(call, peer, context=call_context(context))
        answer = _answer(result)
        if answer is None:
            await abort(context, result)
        assert answer is not None
        return sidecar_pb2.CallPeerResponse(decision=decision_message(result), **answer)

    async def stream_peer(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        call, peer = await self._prepare("StreamPeer", raw, context, streaming=True)
        bridge = StreamBridge()  # bounded: a slow agent holds the relay back, not memory
        allowed: list[CallResult] = []  # the decision, heard just before the relay starts

        async def emit(message: dict[str, Any]) -> None:
            await bridge.put("event", message)

        running = self._streams.start(
            self._calls.call(
                call, peer, context=call_context(context), emit=emit, started=allowed.append
            )
        )
        sent = 0
        try:
            async for _, value in bridge.events(running):
                first = decision_message(allowed[0]) if not sent and allowed else None
                yield sidecar_pb2.PeerEvent(decision=first, **_payload(value))
                sent += 1
        finally:
            bridge.close()
            await finish(running)  # the agent went away: cancelled, its record written first
        result = running.result()
        if sent:  # the peer's answer (its own error included) went out event by event
            if result.code != "ok" and result.rpc_error is None:
                await abort(context, result)  # cut short (peer_timeout, too large, ...)
            return
        answer = _answer(result)  # a unary operation, or a peer answering JSON
        if answer is None:
            await abort(context, result)
        assert answer is not None
        yield sidecar_pb2.PeerEvent(decision=decision_message(result), **answer)

    # --- reading the request --------------------------------------------------------------

    async def _prepare(
        self, rpc: str, raw: bytes, context: grpc.aio.ServicerContext, *, streaming: bool
    ) -> tuple[A2aCall, PeerPort]:
        """The call and its peer, or an audited refusal (the RPC is aborted), with the
        loopback endpoint's codes: audited malformed_request (message_too_large for size),
        the CallError code its JSON-RPC data.code (parse_error, invalid_params, ...)."""
        if len(raw) > self._max:
            await self._refuse(
                rpc,
                context,
                "request_too_large",
                f"request is {len(raw)} bytes; the limit is {self._max} (server.max_request_bytes)",
            )
        try:
            request = sidecar_pb2.CallPeerRequest.FromString(raw)
        except protobuf_message.DecodeError:
            await self._refuse(
                rpc, context, "malformed_request", f"the request is not a valid {rpc} message"
            )
        peer = self._peers.get(request.peer)
        if peer is None:
            await self._refuse(
                rpc,
                context,
                "unknown_peer",
                f"no A2A peer {request.peer[:64]!r} is configured",
            )
        try:
            parsed = protocol.parse_request(
                _body(request), max_bytes=peer.settings.max_message_bytes
            )
        except A2aProtocolError as exc:
            await self._refuse(rpc, context, exc.audit_code, str(exc), wire=exc.code)
        if parsed.streaming and not streaming:
            await self._refuse(
                rpc,
                context,
                "malformed_request",
                f"{parsed.method} answers a stream: call StreamPeer",
                wire="invalid_request",
            )
        return (
            agent_call(
                parsed,
                peer.settings,
                task_id=request.task_id,
                intent=request.intent,
                approval_id=request.approval_id,
                no_wait=request.no_wait,
                time_remaining=context.time_remaining(),
                delegation_chain=tuple(request.delegation_chain),
            ),
            peer,
        )

    async def _refuse(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        code: str,
        message: str,
        *,
        wire: str = "",
    ) -> NoReturn:
        """Audit the refusal under ``code`` and abort; the CallError carries ``wire`` (the
        loopback endpoint's data.code) when it is more precise than the audit code."""
        result = await self._path.reject(rpc, code, message)
        if wire and result.code == code:  # else the record was not written: say so
            result = dataclasses.replace(result, code=wire)
        await abort(context, result)
        raise AssertionError("context.abort returned")  # it raises: the RPC has ended


def worker_binder(settings: Any, tasks: Any, identity: Any) -> ProvenanceBinder | None:
    """The transaction tokens of a worker that serves no inbound listener (worker 0 does):
    the listener's binder, built from the same settings, so that a CallPeer under a task
    carries the same Txn-Token on every worker. None without ``a2a_inbound.listen``."""
    inbound = settings.a2a_inbound
    if not inbound.listen or identity is None:
        return None
    return ProvenanceBinder.from_settings(inbound, tasks, identity, settings.delegation.max_links)


def _body(request: sidecar_pb2.CallPeerRequest) -> bytes:
    """The JSON-RPC request the agent would have posted to the loopback endpoint. The params
    are the agent's own text, checked to be one strict JSON value first, so nothing it holds
    can add a member to the envelope; the id is the sidecar's (the peer sees it)."""
    text = request.params_json or "{}"
    try:
        loads_strict(text.encode(), "params_json")
    except StrictJsonError as exc:
        raise A2aProtocolError(
            str(exc), rpc_code=protocol.PARSE_ERROR, code="parse_error"
        ) from None
    envelope = {"jsonrpc": "2.0", "id": f"grpc-{new_decision_id()}", "method": request.operation}
    head = _dumps(envelope)[:-1]
    return f'{head},"params":{text}}}'.encode()


def _payload(message: dict[str, Any]) -> dict[str, str]:
    """One JSON-RPC message from the guarded call as PeerEvent / CallPeerResponse fields."""
    if "error" in message:
        return {"error_json": _dumps(message["error"])}
    return {"result_json": _dumps(message.get("result"))}


def _answer(result: CallResult) -> dict[str, str] | None:
    """The response fields of a call the peer answered (a result or its own error)."""
    if result.code == "ok" and result.answer is not None:
        return _result_of(result.answer, result.upstream_body)
    if result.rpc_error is not None:
        return _payload(result.rpc_error)
    return None


def _result_of(answer: dict[str, Any], body: bytes) -> dict[str, str]:
    """``result_json`` cut from ``body``, the answer as the guarded call encoded it once
    (sidecar/calls/a2a.py ``upstream_body``: ``{"jsonrpc":..,"id":..,"result":R}``, the same
    encoder), instead of encoding the result a second time; any other shape is encoded."""
    if list(answer) == ["jsonrpc", "id", "result"]:
        head = (
            _dumps({"jsonrpc": answer["jsonrpc"], "id": answer["id"]})[:-1] + ',"result":'
        ).encode()
        if body.startswith(head) and body.endswith(b"}"):
            return {"result_json": body[len(head) : -1].decode()}
    return _payload(answer)
