"""The console's HTTP server (aiohttp): pages, the decision form, live updates (SSE).

Every request but ``/healthz`` names its approver first (:mod:`sidecar.console.auth`) or is
refused. A decision is a POST carrying the approver's anti-CSRF token, from the console's own
origin, with a reason; the broker then checks the approver is one of the approval's
``approvers`` and no party to the request (not its workload, a delegator, or the user it acts
for), and writes the audit record before the change commits. Refused attempts are audited
too. Every response, error pages included, forbids framing, caching and inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.approvals import ApprovalBroker, ApprovalStore
from sidecar.approvals.errors import ApproverRefused
from sidecar.approvals.model import Approval
from sidecar.approvals.settings import console_path_prefix
from sidecar.audit import AuditError
from sidecar.config import Settings
from sidecar.console import pages
from sidecar.console.auth import (
    Approver,
    Csrf,
    NotAuthenticated,
    Peer,
    ProxyGate,
    approver_from_cert,
    approver_from_proxy,
)
from sidecar.console.landing import INDEX, landing
from sidecar.console.proxy import peer_uid
from sidecar.console.signing import console_identity, wait_for_svid
from sidecar.errors import SidecarError
from sidecar.listeners import UnixSocketClaim, claim_unix_socket
from sidecar.state import StateDb, StateError, open_state
from sidecar.tasks import TaskRegistry

__all__ = ["ConsoleServer"]

log = logging.getLogger(__name__)

# Without a change feed (SQLite), how often the console re-reads for live updates.
POLL_S = 1.0
MAX_STREAMS = 200
HEARTBEAT_S = 15.0
_APPROVER = web.RequestKey("approver", Approver)
_STATUS = {
    "self_approval": 403,
    "not_an_approver": 403,
    "not_pending": 409,
    "approval_unknown": 404,
    "reason_required": 400,
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ConsoleServer:
    def __init__(self, settings: Settings, *, state: StateDb | None = None) -> None:
        from sidecar.components import approval_auditor, build_audit

        self._settings = settings
        self._console = settings.console
        problem = self._console.proxy_proof_problem()
        if problem is not None:  # fail closed: no console that believes any local process
            raise SidecarError(problem)
        self._gate = ProxyGate(self._console)
        self._identity = console_identity(settings)
        try:
            self._state = state or open_state(settings.state)
        except BaseException:
            if self._identity is not None:
                self._identity.close()
            raise
        try:
            # Checkpoints signed as serve signs them: the SVID when there is a Workload API.
            self._audit = build_audit(settings, self._identity)
        except BaseException:
            self._state.close()  # a console that cannot audit does not start
            if self._identity is not None:
                self._identity.close()
            raise
        self._record = approval_auditor(self._audit)
        self._broker = ApprovalBroker(
            ApprovalStore(self._state), settings.approvals, record=self._record
        )
        self._tasks = TaskRegistry(self._state, settings.tasks)
        self._csrf = Csrf(self._console.csrf_key_file)
        self._streams = 0
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self._claim: UnixSocketClaim | None = None
        self.address = ""
        if self._state.has_feed:
            self._state.subscribe("approval", self._broker.heard)
            self._state.on_resync(self._broker.wake_all)

    # --- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._list)
        app.router.add_get("/login", self._login)
        app.router.add_get("/approvals/{id}", self._detail)
        app.router.add_post("/approvals/{id}/decide", self._decide)
        app.router.add_get("/events", self._events)
        app.router.add_get("/static/console.css", self._static(pages.STYLE, "text/css"))
        app.router.add_get("/static/console.js", self._static(pages.SCRIPT, "text/javascript"))
        return app

    async def start(self) -> None:
        if self._identity is not None:
            try:
                await asyncio.to_thread(wait_for_svid, self._identity)
            except SidecarError:
                self._state.close()
                with contextlib.suppress(Exception):  # nothing was written to seal
                    self._audit.close()
                self._identity.close()
                raise
        self._broker.bind_loop(asyncio.get_running_loop())
        self._state.start()
        # Live pages hold streams open: a stop does not wait for them to end by themselves.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        path = self._console.unix_path
        if path is not None:
            await self._start_unix(self._runner, path)
        else:
            host, _, port = self._console.listen.rpartition(":")
            site = web.TCPSite(
                self._runner, host.strip("[]"), int(port), ssl_context=self._ssl_context()
            )
            await site.start()
            sockets = site._server.sockets if site._server is not None else ()  # type: ignore[attr-defined]
            bound = sockets[0].getsockname() if sockets else (host, int(port))
            self.address = f"{host}:{bound[1]}"
        if not self._state.has_feed:
            self._poller = asyncio.create_task(self._poll())
        log.info("approvals console listening", extra={"address": self.address})

    async def _start_unix(self, runner: web.AppRunner, path: Path) -> None:
        """The proxy's socket: claimed first (never a live console's or sidecar's: a
        ``ListenError`` naming ``console.listen``; a stale file is replaced; held until
        :meth:`stop`), created under umask 077 (no moment others could connect), then given
        ``console.socket_mode``."""
        self._claim = claim_unix_socket(path, "console.listen")
        previous = os.umask(0o077)
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(previous)
        os.chmod(path, int(self._console.socket_mode, 8))
        self.address = f"unix:{path}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        console = self._console
        if console.auth != "mtls":
            return None
        assert console.tls_cert_file and console.tls_key_file and console.client_ca_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(console.tls_cert_file, console.tls_key_file)
        context.load_verify_locations(console.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._runner is not None:
            await self._runner.cleanup()
        if self._claim is not None:
            self._claim.release()
        self._state.close()
        self._audit.close()
        if self._identity is not None:
            self._identity.close()

    async def _poll(self) -> None:
        """SQLite: changes made by other processes (the sidecar, its CLI) reach the page."""
        seen: dict[str, str] | None = None  # id -> state at the last look
        while True:
            try:
                current = await asyncio.to_thread(self._broker.list, (), 500)
                if seen is not None:
                    for approval in current:
                        if seen.get(approval.id) != approval.state:  # new, or changed
                            self._broker.publish_change(approval)
                seen = {a.id: a.state for a in current}
            except StateError:
                log.warning("the console cannot read the state store")
            await asyncio.sleep(POLL_S)

    # --- the guard: who is asking --------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/healthz" and not request.path.startswith("/static/"):
            try:
                request[_APPROVER] = self._approver(request)
            except NotAuthenticated as exc:
                log.warning(
                    "console request refused", extra={"path": request.path, "error": str(exc)}
                )
                return self._html(pages.error_page(exc.status, str(exc)), exc.status)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405, 413 ...: the same headers as every page
            if exc.status < 400:
                exc.headers.update(_HEADERS)
                raise
            return self._html(pages.error_page(exc.status, exc.reason), exc.status)
        except Exception:
            log.exception("console request failed", extra={"path": request.path})
            return self._html(pages.error_page(500, "internal error"), 500)
        response.headers.update(_HEADERS)
        return response

    def _approver(self, request: web.Request) -> Approver:
        if self._console.auth == "mtls":
            transport = request.transport
            peercert = None
            if transport is not None:
                ssl_object = transport.get_extra_info("ssl_object")
                peercert = ssl_object.getpeercert() if ssl_object is not None else None
            return approver_from_cert(peercert)
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if self._console.unix_path is not None:
            peer = Peer(unix=True, uid=peer_uid(sock))
        else:
            peer = Peer(address=request.remote)
        return approver_from_proxy(self._console, self._gate, peer, request.headers)

    @staticmethod
    def _html(text: str, status: int = 200) -> web.Response:
        response = web.Response(text=text, status=status, content_type="text/html")
        response.headers.update(_HEADERS)
        return response

    @staticmethod
    def _static(body: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(_: web.Request) -> web.Response:
            return web.Response(text=body, content_type=content_type)

        return serve

    # --- pages ---------------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _login(self, request: web.Request) -> web.Response:
        """Where a sign-in returns to: ``next`` if it is one of the console's pages, else the
        index (:mod:`sidecar.console.landing`: never another origin). Behind the guard, so
        reaching it means the proxy has signed the approver in."""
        wanted = request.query.getall("next", [])
        prefix = console_path_prefix(self._settings.approvals.console_url)
        target = landing(wanted[0], prefix) if len(wanted) == 1 else prefix + INDEX
        raise web.HTTPSeeOther(target, headers=_HEADERS)

    def _intents(self, approvals: list[Approval]) -> dict[str, str]:
        intents = {}
        for task_id in {a.task_id for a in approvals if a.task_id}:
            task = self._tasks.get(task_id)
            if task is not None:
                intents[task_id] = task.intent
        return intents

    def _read_list(self, filters: pages.Filters) -> tuple[list[Approval], dict[str, str]]:
        found = self._broker.list(filters.states, 1000)
        shown = [a for a in found if filters.match(a)][: self._console.page_size]
        return shown, self._intents(shown)

    async def _list(self, request: web.Request) -> web.Response:
        filters = pages.Filters(request.query.get("state", "pending"), request.query.get("q", ""))
        try:
            approvals, intents = await asyncio.to_thread(self._read_list, filters)
        except StateError:
            return self._html(pages.error_page(503, "the state store is unreachable"), 503)
        if request.query.get("fragment"):
            return self._html(pages.rows(approvals, intents, time.time_ns()))
        return self._html(pages.list_page(request[_APPROVER], filters, approvals, intents))

    def _read_one(self, approval_id: str) -> tuple[Approval | None, str]:
        approval = self._broker.get(approval_id)
        if approval is None or not approval.task_id:
            return approval, ""
        task = self._tasks.get(approval.task_id)
        return approval, task.intent if task else ""

    async def _detail(self, request: web.Request, message: str = "", status: int = 200) -> Any:
        approver = request[_APPROVER]
        try:
            approval, intent = await asyncio.to_thread(self._read_one, request.match_info["id"])
        except StateError:
            return self._html(pages.error_page(503, "the state store is unreachable"), 503)
        if approval is None:
            return self._html(pages.error_page(404, "no such approval"), 404)
        done = request.query.get("done", "")
        if not message and done in ("approved", "denied"):
            message = f"You {done} this request."
        page = pages.detail_page(approver, approval, intent, self._csrf.token(approver), message)
        return self._html(page, status)

    async def _decide(self, request: web.Request) -> web.StreamResponse:
        approver: Approver = request[_APPROVER]
        approval_id = request.match_info["id"]
        if not self._same_origin(request):
            log.warning(
                "console cross-site post refused",
                extra={
                    "origin": request.headers.get("Origin", ""),
                    "host": request.host,
                    "fetch_site": request.headers.get("Sec-Fetch-Site", ""),
                },
            )
            return self._html(pages.error_page(403, "cross-site request refused"), 403)
        form = await request.post()
        if not self._csrf.valid(approver, str(form.get("csrf", ""))):
            log.warning(
                "console decision without a valid CSRF token", extra={"approver": approver.id}
            )
            return self._html(pages.error_page(403, "the form is stale; reload the page"), 403)
        choice = str(form.get("decision", ""))
        if choice not in ("approve", "deny"):
            return self._html(pages.error_page(400, "decision must be approve or deny"), 400)
        reason = str(form.get("reason", ""))[:2000]
        try:
            await asyncio.to_thread(
                self._broker.decide,
                approval_id,
                approve=choice == "approve",
                approver=approver.id,
                reason=reason,
                groups=approver.groups,
                via="console",
            )
        except ApproverRefused as exc:
            log.warning(
                "approval refused",
                extra={"approval_id": approval_id, "approver": approver.id, "code": exc.code},
            )
            detail = {"actor": approver.id, "code": exc.code, "wanted": choice, "via": "console"}
            with contextlib.suppress(AuditError, StateError):
                current = await asyncio.to_thread(self._broker.get, approval_id)
                await asyncio.to_thread(self._record, "refused", current, detail, approval_id)
            return await self._detail(request, f"{exc.code}: {exc}", _STATUS.get(exc.code, 400))
        except (AuditError, StateError) as exc:
            code = "audit_unavailable" if isinstance(exc, AuditError) else "state_unavailable"
            log.error("console decision not recorded", extra={"approval_id": approval_id})
            return self._html(pages.error_page(503, f"{code}: nothing was changed"), 503)
        done = "approved" if choice == "approve" else "denied"
        raise web.HTTPSeeOther(f"/approvals/{approval_id}?done={done}", headers=_HEADERS)

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A browser names where a form came from; refuse another site's."""
        site = request.headers.get("Sec-Fetch-Site")  # set by the browser, not by pages
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: the CSRF token alone decides
            return True
        return origin != "null" and urlsplit(origin).netloc == request.host

    # --- live updates ----------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            return self._html(pages.error_page(503, "too many live pages open"), 503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_HEADERS})
        await response.prepare(request)
        queue = self._broker.subscribe()
        self._streams += 1
        try:
            while True:
                try:
                    event, approval = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                data = {"event": event, "id": approval.id, "state": approval.state}
                await response.write(f"data: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams -= 1
            self._broker.unsubscribe(queue)
        return response
