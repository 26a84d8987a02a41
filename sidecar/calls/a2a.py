"""A2A calls: one agent-to-peer JSON-RPC request (a send, a streamed send, a task get,
cancel or subscribe, a push-notification config call, the extended card) through the
guarded path.

The action (docs/policy-contract.md, A2A): ``kind: "a2a"``, ``name: "PEER.SKILL"`` (``PEER.``
without a skill), the configured operation (``read`` for the read-only A2A operations), the
method and its operation, the pinned card's facts, a summary of the parts as ``arguments``
(with ``push_url``: the scheme, host and effective port a push-notification config would
send the task to),
and the data classes of everything in the params but the protocol's identifiers (the
transport classifies). Obligations: ``redact`` on the outgoing params, ``redact_response`` on
every answer (a streamed artifact's text across its chunks), the credential. Every secret
the call hands the peer (the credential, the ``Txn-Token``) is scrubbed from what it answers.

An adapter: it receives the guarded path (sidecar/calls/guarded.py), which does the rest.
The transport (sidecar/a2a) supplies the peer: its card facts, the exchange and the
redaction of A2A payloads, through :class:`Peer`; the calls package never imports A2A.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from sidecar.audit import CallRecord, payload_view, result_view
from sidecar.calls.common import CallResult, Facts, Stop
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.relaying import RelayGate
from sidecar.classify import StreamRedactor, redact
from sidecar.errors import SidecarError
from sidecar.identity import CallContext, IdentityError
from sidecar.policy import Action
from sidecar.relay.scrub import Scrubber

__all__ = [
    "A2aCall",
    "A2aCalls",
    "AnswerStream",
    "Emit",
    "Peer",
    "PeerCard",
    "PeerFailure",
    "TaskLedger",
]

# The sidecar's own JSON-RPC band (sidecar/a2a/protocol.py): a peer's error with such a code
# becomes -32603 (its code kept in data.upstream_code), so it cannot pass for the sidecar's.
_SIDECAR_BAND = range(-32019, -32009)
_INTERNAL_ERROR = -32603
# What only the sidecar's refusals carry in an error's data.
_SIDECAR_DATA_KEYS = frozenset({"approval_id", "approval_url", "decision_id", "code"})

# Writes one streamed JSON-RPC message to the agent (SSE).
Emit = Callable[[dict[str, Any]], Awaitable[None]]


class PeerFailure(SidecarError):
    """The peer could not be reached or answered unusably (a stable ``code``); ``reached``:
    whether any byte of the request may have reached it."""

    def __init__(self, message: str, *, code: str, reached: bool) -> None:
        super().__init__(message)
        self.code = code
        self.reached = reached


@dataclass(frozen=True)
class PeerCard:
    """The pinned card's facts policy decides on, and the wire binding that card gives
    (the transport's): kept per call, so the request goes out as the card it was decided
    under says, whatever card is accepted meanwhile."""

    facts: dict[str, Any]
    binding: str


class AnswerStream(Protocol):
    """A streamed answer's redaction across events (sidecar/a2a/redact.py ArtifactStreams)."""

    def feed(self, message: dict[str, Any], rpc_id: Any, version: str) -> list[dict[str, Any]]: ...

    def finish(self, rpc_id: Any, version: str) -> list[dict[str, Any]]: ...


class TaskLedger(Protocol):
    """One call's peer-task ownership (sidecar/a2a/peer_tasks.py): ``admit`` (a read, before
    policy) raises a :class:`PeerFailure` (``task_not_owned``) for another agent's task or
    context; ``claim`` (once policy allowed, before sending) claims a new context and may
    raise the same; ``answer`` records the ids each peer message names as the subject's
    before the agent sees them."""

    task_owner: str

    async def admit(self) -> None: ...

    async def claim(self) -> None: ...

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]: ...


class Peer(Protocol):
    """What the adapter needs of one configured peer (sidecar/a2a/outbound.py)."""

    name: str
    target: str  # its relay slots and credential
    timeout_s: float

    async def card_facts(self) -> PeerCard: ...

    def exchange(
        self, body: dict[str, Any], headers: Mapping[str, str], *, stream: bool, binding: str
    ) -> AsyncIterator[dict[str, Any]]: ...

    def redact_request(self, params: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]: ...

    def redact_answer(self, message: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]: ...

    async def provenance_headers(self, record: CallRecord, facts: Facts) -> dict[str, str]: ...

    def answer_stream(self, new: Callable[[], StreamRedactor]) -> AnswerStream: ...

    def task_ledger(self, subject: str, call: A2aCall, binding: str) -> TaskLedger: ...

    def checked_answer(self, a2a_operation: str, message: dict[str, Any]) -> dict[str, Any]:
        """The peer's raw answer checked (and rewritten) before any redaction: the extended
        card verified; a :class:`PeerFailure` refuses it."""
        ...


@dataclass(frozen=True)
class A2aCall:
    """One A2A request from the agent, read by the transport."""

    rpc_id: int | str | None
    method: str
    a2a_operation: str
    version: str
    skill: str
    # read for the read-only operations, else the skill's configured operation
    operation: str
    params: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    part_kinds: list[str] = field(default_factory=list)
    a2a_task_id: str = ""
    context_id: str = ""
    # The message's referenceTaskIds, each once (bounded by the parser).
    references: tuple[str, ...] = ()
    metadata_keys: list[str] = field(default_factory=list)
    # Every class found in the params but their protocol identifiers (the transport's).
    data_classes: list[str] = field(default_factory=list)
    # {scheme, host, port} of a push-notification URL the request names (port: the effective
    # one, sidecar/a2a/push_url.py); None when it names none.
    push_url: dict[str, str | int] | None = None
    streaming: bool = False
    # The sidecar's own task (X-Agent-Sidecar-Task), intent, approval to retry with.
    task_id: str = ""
    intent: str = ""
    approval_id: str = ""
    no_wait: bool | str = False
    # How long the call may take in all (waiting for an approver included); None: the
    # peer's timeout_s bounds the relay.
    time_remaining: float | None = None
    # JWT-SVIDs of the agents that delegated this call (the gRPC API's delegation_chain).
    delegation_chain: tuple[str, ...] = ()

    def body(self, params: dict[str, Any], rpc_id: Any = None) -> dict[str, Any]:
        """The request as the peer gets it: ``rpc_id`` when given (the agent's id redacted
        under a ``redact`` obligation), else the agent's own."""
        sent_id = self.rpc_id if rpc_id is None else rpc_id
        return {"jsonrpc": "2.0", "id": sent_id, "method": self.method, "params": params}


class A2aCalls:
    """A2A requests to configured peers, each one guarded call with one audit record."""

    def __init__(self, path: GuardedPath, gate: RelayGate) -> None:
        self._path = path
        self._gate = gate

    async def reject(self, rpc: str, code: str, message: str) -> CallResult:
        """A request refused before it could be read (too large, malformed, unknown peer)."""
        return await self._path.reject(rpc, code, message)

    async def card(
        self,
        peer: str,
        context: CallContext,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
    ) -> CallResult:
        """The peer's pinned card for the agent (a GET): the caller attested first, as for
        a request; an unattested caller gets no card. A refused read is audited (who probed);
        a served one is not (the SDK reads the card before every client it builds)."""
        try:
            self._path.attest(CallRecord(decision_id="", rpc="A2A agent card", time_ns=0), context)
            return CallResult("", "ok", grpc.StatusCode.OK, answer=await fetch())
        except (Stop, PeerFailure):
            pass

        async def step(record: CallRecord, deadline: float) -> CallResult:
            record.action = {"kind": "a2a", "name": f"{peer}.", "method": "GET agent-card"}
            self._path.attest(record, context)
            try:
                card = await fetch()
            except PeerFailure as exc:
                raise Stop(exc.code, str(exc)) from exc
            return CallResult(record.decision_id, "ok", grpc.StatusCode.OK, answer=card)

        return await self._path.run("A2A agent card", None, step)

    async def call(
        self,
        call: A2aCall,
        peer: Peer,
        *,
        context: CallContext,
        emit: Emit | None = None,
        started: Callable[[CallResult], None] | None = None,
    ) -> CallResult:
        """Decide and relay ``call``; a streamed answer goes to ``emit`` event by event.
        ``started`` hears the allowed decision just before the relay (the gRPC stream's
        first message carries it)."""
        scrubber = Scrubber()  # given every secret the call hands the peer, once it does

        async def run(record: CallRecord, deadline: float) -> CallResult:
            # Defence in depth: however a failure's message was made (the peer's text in an
            # exception, a card error), it reaches the agent and the audit record scrubbed.
            try:
                return await self._run(
                    record, call, peer, context, emit, deadline, started, scrubber
                )
            except Stop as stop:
                if not scrubber:
                    raise
                raise Stop(stop.code, scrubber.text(str(stop)), **stop.kwargs) from None

        return await self._path.run(f"A2A {call.method}", call.time_remaining, run)

    async def _run(
        self,
        record: CallRecord,
        call: A2aCall,
        peer: Peer,
        context: CallContext,
        emit: Emit | None,
        deadline: float,
        started: Callable[[CallResult], None] | None,
        scrubber: Scrubber,
    ) -> CallResult:
        trace = self._path.begin(record, context, call.intent)
        name = f"{peer.name}.{call.skill}"
        record.action = {
            "kind": "a2a",
            "name": name,
            "method": call.method,
            "a2a_operation": call.a2a_operation,
        }
        subject, chain, user, task = await self._path.establish(
            record,
            context,
            trace,
            delegation_chain=call.delegation_chain,
            task_id=call.task_id,
            count=True,
        )
        try:
            pinned = await peer.card_facts()
            # Another local agent's task at this peer (it sees one caller: the sidecar).
            ledger = peer.task_ledger(subject.spiffe_id, call, pinned.binding)
            await ledger.admit()
        except PeerFailure as exc:
            raise Stop(exc.code, str(exc)) from exc
        arguments = {
            "parts": {
                "count": len(call.parts),
                "kinds": call.part_kinds,
                "chars": sum(len(t) for t in call.texts),
            },
            "task_id": call.a2a_task_id,
            "context_id": call.context_id,
            "task_owner": ledger.task_owner,
            "metadata_keys": call.metadata_keys,
        }
        if call.push_url is not None:
            arguments["push_url"] = dict(call.push_url)
        action = Action(
            kind="a2a",
            name=name,
            operation=call.operation,  # type: ignore[arg-type]
            target=peer.name,
            arguments=arguments,
            data_classes=tuple(call.data_classes),
            method=call.method,
            details={
                "method": call.method,
                "a2a_operation": call.a2a_operation,
                "skill": call.skill,
                "card": pinned.facts,
            },
        )
        record.action = {
            "kind": "a2a",
            "name": name,
            "operation": call.operation,
            "target": peer.name,
            "method": call.method,
            "a2a_operation": call.a2a_operation,
            "skill": call.skill,
            "data_classes": sorted(set(action.data_classes)),
            "arguments": payload_view(call.params, "metadata"),
        }
        # The approval is bound to the whole request as sent, not to its summary, and to its
        # method: an approved SendMessage does not redeem a SendStreamingMessage (the approver
        # sees both).
        bound = {"method": call.method, "params": call.params}
        facts = Facts(subject, chain, task, call.task_id, action, bound, user)
        decided, common = await self._path.authorize(
            record,
            facts,
            acting=True,
            approval_id=call.approval_id,
            no_wait=call.no_wait,
            deadline=deadline,
            trace=trace,
            view_arguments=False,
        )
        decision = decided.decision
        log_level = decision.obligations.log
        if not decision.allowed:
            record.action["arguments"] = payload_view(call.params, log_level)
            raise Stop(decision.code, "; ".join(decision.reasons) or decision.code, **common)
        obligations = decision.obligations
        sent, sent_id = call.params, call.rpc_id
        if obligations.redact:
            sent = peer.redact_request(call.params, list(obligations.redact))
            # The peer reads the request's id too (its answer comes back under the agent's).
            sent_id = redact(call.rpc_id, list(obligations.redact))
        record.action["arguments"] = payload_view(sent, log_level)
        remaining = self._path.time_to_relay(deadline, common)
        record.upstream = {"peer": peer.name, "method": call.method}
        try:
            headers = {"X-Request-Id": record.decision_id}
            provenance = await peer.provenance_headers(record, facts)
            for value in provenance.values():
                scrubber.add(value)  # a peer echoing the Txn-Token never hands it on
            headers |= provenance
            headers |= await self._gate.credential_headers(
                peer.target, obligations.credential, call.task_id, scrubber, user
            )
        except IdentityError as exc:
            raise Stop("credential_unavailable", str(exc), **common) from exc
        except PeerFailure as exc:  # the task's transaction token (ended, invalid)
            raise Stop(exc.code, str(exc), **common) from exc
        try:
            # authorize -> claim -> send: a request refused (or held) claims no context.
            await ledger.claim()
        except PeerFailure as exc:
            raise Stop(exc.code, str(exc), **common) from exc
        await self._path.before_relay(record, common)
        if started is not None:
            started(CallResult(record.decision_id, "ok", grpc.StatusCode.OK, **common))

        classes = list(obligations.redact_response)
        streams = peer.answer_stream(lambda: scrubber.stream(classes)) if call.streaming else None

        def answer(message: dict[str, Any]) -> dict[str, Any]:
            message = scrubber.value(message)
            if classes:
                message = peer.redact_answer(message, classes)
            return _as_agents(message, call.rpc_id)

        def answers(message: dict[str, Any]) -> list[dict[str, Any]]:
            if streams is None:
                return [answer(peer.checked_answer(call.a2a_operation, message))]
            return [answer(m) for m in streams.feed(message, call.rpc_id, call.version)]

        final: dict[str, Any] | None = None
        events = 0
        # From here the request may reach the peer: a cancellation (the agent went away)
        # is on record as relayed; a failure before any byte left says otherwise below.
        record.relayed = True
        t0 = time.perf_counter()
        try:
            async with (
                self._gate.slots(peer.target),
                asyncio.timeout(min(peer.timeout_s, remaining)),
            ):
                stream = peer.exchange(
                    call.body(sent, sent_id), headers, stream=call.streaming, binding=pinned.binding
                )
                try:
                    async for message in stream:
                        events += 1
                        for final in answers(await ledger.answer(message)):
                            if call.streaming and emit is not None:
                                await emit(final)
                    for final in (
                        [answer(m) for m in streams.finish(call.rpc_id, call.version)]
                        if streams
                        else []
                    ):
                        if emit is not None:
                            await emit(final)
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
        except TimeoutError:
            record.relayed = True
            record.upstream["events"] = events
            raise Stop(
                "peer_timeout",
                f"the peer did not finish within {min(peer.timeout_s, remaining):.1f}s",
                **common,
            ) from None
        except PeerFailure as exc:
            record.relayed = exc.reached
            record.upstream["events"] = events
            raise Stop(exc.code, str(exc), **common) from exc
        finally:
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
        record.relayed = True
        record.upstream["events"] = events
        record.upstream["credentials_scrubbed"] = scrubber.count
        if final is None:
            raise Stop("peer_bad_response", "the peer answered nothing", **common)
        body = json.dumps(final, separators=(",", ":"), ensure_ascii=False).encode()
        record.upstream["result"] = result_view(body, "application/json", log_level)
        if "error" in final:
            record.upstream["error"] = {"code": final["error"].get("code")}
            return CallResult(
                record.decision_id,
                "upstream_error",
                grpc.StatusCode.UNAVAILABLE,
                "the peer answered with an error",
                rpc_error=final,
                **common,
            )
        # ``upstream_body``: the answer as encoded once, here; the transport sends these bytes.
        return CallResult(
            record.decision_id, "ok", grpc.StatusCode.OK, answer=final, upstream_body=body, **common
        )


def _as_agents(message: dict[str, Any], rpc_id: Any) -> dict[str, Any]:
    """The peer's message as the agent gets it: under the agent's request id, and a peer's
    error unable to speak as the sidecar (its codes and data keys)."""
    out: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id}
    error = message.get("error")
    if "error" in message:
        if not isinstance(error, dict):
            error = {"code": _INTERNAL_ERROR, "message": "the peer's error is not an object"}
        code = error.get("code")
        text = error.get("message")
        clean: dict[str, Any] = {
            "code": code if isinstance(code, int) and not isinstance(code, bool) else -32603,
            "message": text if isinstance(text, str) else "",
        }
        data = error.get("data")
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _SIDECAR_DATA_KEYS}
        if clean["code"] in _SIDECAR_BAND:
            data = (data if isinstance(data, dict) else {}) | {"upstream_code": clean["code"]}
            clean["code"] = _INTERNAL_ERROR
        if data is not None:
            clean["data"] = data
        out["error"] = clean
    else:
        out["result"] = message.get("result")
    return out
