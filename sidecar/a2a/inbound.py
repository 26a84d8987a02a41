"""The inbound A2A listener: the sidecar in front of its agent's own A2A server
(docs/a2a.md "Inbound").

Peers reach the pod here, over TLS with the sidecar's X.509-SVID. Each JSON-RPC request:
the caller verified (sidecar/a2a/callers.py), its transaction token verified (txn_token.py),
the request read by the one A2A parser (protocol.py), its parts classified, policy asked
(``action.kind: a2a_inbound``) on the guarded path, and only on allow a task opened or joined
(provenance.py) and the request passed to the agent on loopback, SSE streamed through. The
agent sees the verified caller in ``x-agent-sidecar-*`` headers; every such header the caller
sent is removed first, as are its Authorization and Txn-Token. Each request is one audit
record. The agent's card is served at ``/.well-known/agent-card.json``, its interface URLs
pointing here, optionally signed with the SVID.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from sidecar.a2a import protocol, rest_binding
from sidecar.a2a.callers import Caller, CallerUnverified, CallerVerifier, peer_certificate
from sidecar.a2a.errors import A2aError, A2aProtocolError, TxnEnded
from sidecar.a2a.inbound_answer import AnswerRelay
from sidecar.a2a.inbound_request import (
    arguments_of,
    push_fact,
    sent_id,
    sent_request,
)
from sidecar.a2a.inbound_tls import svid_server_context
from sidecar.a2a.inbound_wire import AGENT_HEADER_PREFIX, agent_headers, read_card, rewrite_card
from sidecar.a2a.inbound_wire import json_error as _json_error
from sidecar.a2a.inbound_wire import trace_of as _trace
from sidecar.a2a.provenance import ProvenanceBinder, intent_of
from sidecar.a2a.redact import classify_params
from sidecar.a2a.task_owners import TaskOwners
from sidecar.a2a.txn_status import STATUS_PATH, TxnStatusClient, status_answer
from sidecar.a2a.txn_token import MAX_TOKEN_CHARS, TXN_HEADER, TxnToken
from sidecar.a2a_inbound_settings import InboundSettings
from sidecar.aiohttpserve import BodyError, HttpServer, bind_tcp, read_body
from sidecar.audit import CallRecord, payload_view
from sidecar.calls.a2a_inbound import InboundCall, InboundCalls
from sidecar.calls.common import CallResult, Stop, off_loop
from sidecar.calls.guarded import GuardedPath
from sidecar.identity import CallContext, IdentityError, WorkloadIdentity
from sidecar.policy import Decision, Obligations
from sidecar.state import StateDb
from sidecar.tasks import TaskRegistry
from sidecar.users import UserVerifier

__all__ = ["AGENT_HEADER_PREFIX", "InboundListener"]  # the prefix: inbound_wire.py

log = logging.getLogger(__name__)

CARD_PATH = "/.well-known/agent-card.json"
# How long start waits for the first X.509-SVID (the listener's TLS certificate).
READY_TIMEOUT_S = 30.0
# Headers a request may carry before its caller is verified: each one up to a Txn-Token.
MAX_HEADERS = 32
# An agent's unary answer is read whole (its task ids recorded) before the caller sees it.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
TASK_NOT_FOUND = -32001  # A2A TaskNotFoundError: another caller's task is not this one's
UNSUPPORTED_OPERATION = -32004
# The agent's answer headers the caller receives.
# Not Content-Type: the sidecar labels the answer by what it read (review s12 R2).
_PASSED_BACK = ("Cache-Control", protocol.A2A_VERSION_HEADER)
# HTTP status of a refusal: an unverifiable caller (or its token) is 401, a body over the
# bound 413, the agent's own failures 502/504; every other refusal, policy's included, is a
# JSON-RPC error in an HTTP 200 answer, as A2A's JSON-RPC binding answers errors.
_HTTP_STATUS = {
    "caller_unverified": 401,
    "txn_token_invalid": 401,
    "message_too_large": 413,
    "agent_timeout": 504,
    "agent_unavailable": 502,
    "agent_bad_response": 502,
    "audit_unavailable": 503,
} | rest_binding.INBOUND_HTTP_STATUS  # binding_unsupported: 404 (JSON-RPC only here)
_RPC_CODE = {
    "caller_unverified": protocol.UNAUTHENTICATED,
    "txn_token_invalid": protocol.UNAUTHENTICATED,
    "message_too_large": protocol.RESOURCE_EXHAUSTED,
    "task_not_owned": TASK_NOT_FOUND,
    "too_many_references": protocol.RESOURCE_EXHAUSTED,
    "list_tasks_refused": UNSUPPORTED_OPERATION,
    "skill_mismatch": protocol.INVALID_PARAMS,
    "malformed_request": protocol.INVALID_REQUEST,
    "approval_required": protocol.APPROVAL_REQUIRED,
    "agent_timeout": protocol.DEADLINE_EXCEEDED,
    "deadline_exceeded": protocol.DEADLINE_EXCEEDED,
    "agent_unavailable": protocol.UNAVAILABLE,
    "agent_bad_response": protocol.UNAVAILABLE,
    "audit_unavailable": protocol.UNAVAILABLE,
    "state_unavailable": protocol.UNAVAILABLE,
    "internal_error": protocol.INTERNAL_ERROR,
}


class InboundListener:
    """Serves ``a2a_inbound.listen``; build it before the loop runs, start it on the loop."""

    def __init__(
        self,
        settings: InboundSettings,
        *,
        path: GuardedPath,
        tasks: TaskRegistry,
        identity: WorkloadIdentity,
        users: UserVerifier,
        user_issuer_url: str,
        max_links: int,
        state: StateDb,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._calls = InboundCalls(path)
        self._binder = ProvenanceBinder.from_settings(settings, tasks, identity, max_links)
        self._status = TxnStatusClient(
            identity, settings.txn_status_hosts, settings.txn_status_cache_s
        )
        self._owners = TaskOwners(state)
        self._verifier = CallerVerifier(
            identity,
            agent_id=lambda: self._binder.agent_id,
            trust_domains=settings.trust_domains,
            accept_jwt_svid=settings.accept_jwt_svid,
            users=users,
            user_issuer=settings.users.issuer,
            user_issuer_url=user_issuer_url,
        )
        self._card = read_card(settings) if settings.card is not None else None
        host, _, port = settings.listen.rpartition(":")
        self._sock = bind_tcp(host.strip("[]"), int(port))
        self._server: HttpServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = self._sock.getsockname()[1]

    @property
    def provenance(self) -> ProvenanceBinder:
        """``outbound_headers(task)`` for the outbound A2A relay."""
        return self._binder

    async def start(self) -> None:
        if not await asyncio.to_thread(self._identity.wait_ready, READY_TIMEOUT_S):
            raise IdentityError(
                f"no X.509-SVID within {READY_TIMEOUT_S:.0f}s: the A2A inbound listener serves "
                "TLS with it",
                code="identity_not_ready",
            )
        tls = svid_server_context(
            self._identity,
            self._settings.trust_domains,
            require_client_cert=not self._verifier.bearer_accepted,
            loop=asyncio.get_running_loop(),
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # one caller's cookie never reaches another's call
        )
        self._server = HttpServer(
            self._sock,
            self._handle,
            max_connections=256,
            idle_timeout_s=60.0,
            error_response=lambda status, code, message: _json_error(status, None, code, message),
            tls=tls,
            max_field_size=MAX_TOKEN_CHARS + 1024,  # a Txn-Token grows with each hop
            max_headers=MAX_HEADERS,
            cancel_on_disconnect=True,  # a caller gone: its call to the agent ends too
        )
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)
        if self._session is not None:
            await self._session.close()
        await self._status.aclose()

    def close(self) -> None:
        if self._server is None:
            self._sock.close()

    # --- requests --------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == CARD_PATH and request.method == "GET":
            return self._serve_card(request)
        if request.path.startswith(STATUS_PATH) and request.method == "GET":
            return await self._serve_status(request)
        if request.path != "/" or request.method != "POST":
            if rest := rest_binding.rest_refusal(request.method, request.path):  # audited
                return await self._refused(None, rest.code, rest.message, None, rest.rpc_code)
            return _json_error(404, None, "not_found", "POST A2A JSON-RPC to /")
        try:
            caller = await self._verifier.verify(
                request.headers.getall("Authorization", []),
                peer_certificate(request.transport.get_extra_info("ssl_object")),
            )
        except CallerUnverified as exc:
            return await self._refused(None, exc.code, f"{exc.reason}: {exc}", None)
        except Exception:  # a credential of a shape no check foresaw: refused and audited
            log.exception("inbound caller verification failed")
            return await self._refused(
                None, "caller_unverified", "the caller cannot be verified", None
            )
        who = {"spiffe_id": caller.id, "attestation": caller.via}
        try:
            admitted = await self._admit(request, caller, who)
        except Exception:  # whatever happens before policy, the call is one audit record
            log.exception("inbound A2A request failed before policy")
            return await self._refused(None, "internal_error", "internal error", who)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        return await self._decide_and_relay(request, caller, *admitted)

    async def _admit(
        self, request: web.BaseRequest, caller: Caller, who: dict[str, Any]
    ) -> web.StreamResponse | tuple[protocol.A2aRequest, TxnToken | None, bytes, str]:
        """Everything checked before policy: body, request, skill, task owner, Txn-Token."""
        try:
            body = await read_body(request, self._settings.max_message_bytes, 30.0)
        except BodyError as exc:
            code = "message_too_large" if exc.status == 413 else "malformed_request"
            return await self._refused(None, code, str(exc), who)
        try:
            parsed = protocol.parse_request(body)
        except A2aProtocolError as exc:  # the parser's own codes that say more than malformed
            return await self._refused(None, exc.audit_code, str(exc), who, exc.rpc_code)
        if parsed.operation == "list_tasks":
            return await self._refused(
                parsed.id,
                "list_tasks_refused",
                "ListTasks is not passed to the agent: it would list other callers' tasks; "
                "GetTask names one of yours",
                who,
            )
        task_owner, context_owner = "", ""
        if parsed.task_id or parsed.context_id:  # a new message names neither: no lookup
            task_owner, context_owner = await off_loop(
                self._owners.owners, self._binder.agent_id, parsed.task_id, parsed.context_id
            )
        if (parsed.task_id and task_owner != caller.id) or context_owner not in ("", caller.id):
            return await self._refused(
                parsed.id,
                "task_not_owned",
                f"no task {parsed.task_id or parsed.context_id!r} of this caller's",
                who,
            )
        refs = list(parsed.references)  # shape and count: the parser's (identifiers.py)
        if refs:  # each referenced task handed to the agent's executor: the caller's own only
            owners = await off_loop(self._owners.task_owners, self._binder.agent_id, refs)
            if stranger := next((r for r in refs if owners.get(r) != caller.id), None):
                return await self._refused(
                    parsed.id, "task_not_owned", f"no task {stranger!r} of this caller's", who
                )
        try:
            values = request.headers.getall(TXN_HEADER, [])  # none: no thread hop
            token = await off_loop(self._binder.incoming, values, caller) if values else None
        except A2aError as exc:
            return await self._refused(parsed.id, exc.code, str(exc), who)
        except Exception as exc:  # a token of a shape no check foresaw: refused, and audited
            # The type only: a message or traceback could quote a piece of the token.
            log.error("transaction token check failed: %s", type(exc).__name__)
            return await self._refused(
                parsed.id, "txn_token_invalid", "the transaction token cannot be verified", who
            )
        return parsed, token, body, task_owner

    async def _decide_and_relay(
        self,
        request: web.BaseRequest,
        caller: Caller,
        parsed: protocol.A2aRequest,
        token: TxnToken | None,
        body: bytes,
        task_owner: str,
    ) -> web.StreamResponse:
        texts = protocol.part_texts(parsed.parts)
        inbound = {
            "agent": self._binder.agent_id,
            "caller": caller.to_input(),
            "skill": parsed.skill,
            "a2a_operation": parsed.operation,
            "method": parsed.method,
            "task_owner": task_owner,
        }
        if push := push_fact(parsed.push_url):  # where the agent will POST task updates
            inbound["push_url"] = push
        call = InboundCall(
            subject=caller.subject,
            user=caller.user,
            chain=token.chain if token is not None else (),
            inbound=inbound,
            skill=parsed.skill,
            operation="read" if parsed.read_only else "act",
            data_classes=tuple(classify_params(parsed.params, rpc_id=parsed.id)),
            arguments=arguments_of(parsed, parsed.parts),
            intent=intent_of(parsed.skill, texts),
            trace=CallContext(metadata=_trace(request)),
        )
        holder: dict[str, web.StreamResponse] = {}

        async def relay(record: CallRecord, decision: Decision, deadline: float) -> CallResult:
            sent, arguments, intent = sent_request(parsed, body, decision.obligations.redact)
            sending = call
            if arguments is not None:  # the record describes what the agent received
                record.action["arguments"] = payload_view(arguments, decision.obligations.log)
                record.intent = intent  # the task's intent (and purpose): redacted too
                sending = dataclasses.replace(call, intent=intent)
            return await self._relay(
                request, parsed, caller, token, sending, sent, record, holder, decision.obligations
            )

        result = await self._calls.call(call, relay, self._settings.timeout_s)
        if "response" in holder:  # the agent's answer is (being) sent: the stream ends here
            return holder["response"]
        return _json_error(
            _HTTP_STATUS.get(result.code, 200),
            parsed.id,
            result.code,
            result.message,
            _RPC_CODE.get(result.code, protocol.DENIED),
            result.decision_id,
        )  # fmt: skip

    async def _origin_active(self, token: TxnToken | None) -> None:
        """After policy allowed the call: a transaction this store does not know is asked of
        its origin (generic ``txn_ended`` to the caller; the details are logged)."""
        if token is None or not token.status_url:
            return
        if await off_loop(self._binder.txn_state, token.txn) != "unknown":
            return  # a shared store: incoming() already refused an ended transaction
        try:
            await self._status.check(token.status_url, token.txn, token.origin)
        except TxnEnded as exc:
            raise Stop("txn_ended", str(exc)) from None

    async def _relay(
        self,
        request: web.BaseRequest,
        parsed: protocol.A2aRequest,
        caller: Caller,
        token: TxnToken | None,
        call: InboundCall,
        body: bytes,
        record: CallRecord,
        holder: dict[str, web.StreamResponse],
        obligations: Obligations,
    ) -> CallResult:
        await self._origin_active(token)
        task_id = ""
        if not parsed.read_only:  # a read operation changes nothing: it needs no task
            task = await self._binder.open_task(caller, token, call.intent)  # loop or thread
            task_id, provenance = task.id, task.provenance
            record.task = {"id": task.id, "intent": task.intent, "owner": task.owner}
            if provenance is not None:  # the record's delegation stays the caller's delegators
                record.task["origin"] = provenance.to_input()
        elif token is not None:  # a read opens no task; its transaction still joins the audit
            origin = {"txn": token.txn, "requester": token.requester, "purpose": token.purpose}
            record.task = {"origin": origin}
        headers = agent_headers(request.headers, caller, task_id, record.decision_id, call.skill)
        record.upstream = {"target": "agent", "method": parsed.method}
        assert self._session is not None
        t0 = time.perf_counter()
        record.relayed = True
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                async with self._session.post(
                    self._settings.agent_url, data=body, headers=headers, allow_redirects=False
                ) as answer:
                    record.upstream["status"] = answer.status
                    passed = {n: answer.headers[n] for n in _PASSED_BACK if n in answer.headers}
                    passed["x-agent-sidecar-decision-id"] = record.decision_id
                    record.upstream["bytes"] = await self._pass_back(
                        request, answer, passed, caller, holder, parsed, obligations
                    )
        except TimeoutError:
            raise Stop("agent_timeout", "the agent did not answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            if "response" not in holder:
                record.relayed = False
            raise Stop("agent_unavailable", f"the agent cannot be reached: {exc}") from None
        finally:
            record.latency_ms["relay"] = (time.perf_counter() - t0) * 1000
        return CallResult(record.decision_id, "ok", grpc.StatusCode.OK)

    async def _pass_back(
        self,
        request: web.BaseRequest,
        answer: aiohttp.ClientResponse,
        headers: dict[str, str],
        caller: Caller,
        holder: dict[str, web.StreamResponse],
        parsed: protocol.A2aRequest,
        obligations: Obligations,
    ) -> int:
        """The agent's answer to the caller (inbound_answer.py): each task and context id in
        it recorded as the caller's before the caller can see (and name) it, under the
        caller's own request id, and ``redact_response`` applied."""
        agent = self._binder.agent_id
        if answer.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # Asked for identity, answered compressed: ids unreadable (unrecorded), bytes unlabelled
            raise Stop("agent_unavailable", "the agent's answer is compressed; identity asked")

        async def record(ids: set[str]) -> None:
            await off_loop(self._owners.record, agent, caller.id, ids)

        relay = AnswerRelay(
            record, obligations.redact_response, parsed.id, parsed.version, MAX_ANSWER_BYTES,
            renamed=sent_id(parsed, obligations.redact) != parsed.id,
        )  # fmt: skip
        # A stream wherever an SSE client would read one ("text/event-stream" anywhere in the
        # type, as the a2a-sdk client tests it; any case): review s12 R2.
        if "text/event-stream" not in answer.headers.get("Content-Type", "").lower():
            unary, size = await relay.unary(answer, headers)
            holder["response"] = unary
            await unary.prepare(request)
            await unary.write_eof()
            return size
        # SSE is UTF-8: an agent's charset (latin-1: byte 0x85 a line break) would have the
        # caller split lines the sidecar did not (review s12 F2), so none is passed on.
        headers["Content-Type"] = "text/event-stream"
        response = web.StreamResponse(status=answer.status, headers=headers)
        holder["response"] = response
        await response.prepare(request)
        return await relay.stream(answer, response)

    async def _refused(
        self,
        rpc_id: Any,
        code: str,
        message: str,
        subject: dict[str, Any] | None,
        rpc_code: int | None = None,
    ) -> web.Response:
        result = await self._calls.refuse(code, message, subject)
        status = _HTTP_STATUS.get(code, 200)
        if result.code != code:  # the audit record could not be written
            code, status, message = result.code, 503, result.message
        return _json_error(
            status, rpc_id, code, message, rpc_code or _RPC_CODE.get(code, protocol.DENIED),
            result.decision_id,
        )  # fmt: skip

    async def _serve_status(self, request: web.BaseRequest) -> web.Response:
        """The origin status check: a verified workload asks whether a transaction this
        sidecar started is still active (not audited: no call of the agent's)."""
        try:
            caller = await self._verifier.verify(
                request.headers.getall("Authorization", []),
                peer_certificate(request.transport.get_extra_info("ssl_object")),
            )
        except CallerUnverified as exc:
            return _json_error(401, None, exc.code, str(exc), protocol.UNAUTHENTICATED)
        if caller.kind != "workload":
            return _json_error(403, None, "caller_unverified", "workloads only")
        txn = request.path.removeprefix(STATUS_PATH)
        if not txn.startswith("txn-") or len(txn) > 64 or not txn[4:].isalnum():
            return web.json_response(status_answer(txn[:64], "unknown"))
        state = await off_loop(self._binder.txn_state, txn)
        return web.json_response(status_answer(txn, state))

    # --- the card ------------------------------------------------------------------------

    def _serve_card(self, request: web.BaseRequest) -> web.Response:
        if self._card is None:
            return _json_error(404, None, "not_found", "no agent card is configured")
        # Signed: only ever a2a_inbound.url (settings require it); unsigned: the Host asked for.
        base = self._settings.url or f"https://{request.host}/"
        card = rewrite_card(self._card, base)
        if self._settings.sign_card and self._settings.url:
            from sidecar.a2a.card_signature import sign_card_with_svid

            card = sign_card_with_svid(card, self._identity.snapshot())
        return web.json_response(card)
