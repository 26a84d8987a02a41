"""The AuthZEN Authorization API 1.0 over HTTPS JSON, on its own listener.

``GET /.well-known/authzen-configuration`` (PDP metadata), ``POST /access/v1/evaluation`` and
``POST /access/v1/evaluations`` (boxcarring, with ``execute_all``, ``deny_on_first_deny``,
``permit_on_first_permit``), and the search APIs ``POST /access/v1/search/{subject,resource,
action}`` (search.py: each candidate is a single evaluation). Each evaluation runs the
sidecar's decide-only path: the same policy, the same failure codes, one audit record each,
naming the caller.

Who may ask: a unix socket (its mode decides; the caller is named by its uid, from
SO_PEERCRED), or TCP with mTLS: the sidecar's X.509-SVID as server certificate, the caller's
verified against the trust bundle and its SPIFFE ID one of ``authzen.callers`` (403
otherwise). Request bodies are strict JSON objects of at most 1 MiB; errors are 400 / 403 /
500 with a message string, as the specification has them; ``X-Request-ID`` is echoed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.authzen.catalog import Catalog, subjects_in
from sidecar.authzen.mapping import (
    AuthZenRequestError,
    EvaluationError,
    error_decision,
    evaluations_of,
    parse_evaluation,
    to_decision,
)
from sidecar.authzen.search import KINDS, PageTokens, SearchError, search
from sidecar.calls.asserted import AssertedCalls
from sidecar.config import Settings
from sidecar.identity.credentials import load_svid, server_context
from sidecar.identity.errors import IdentityError
from sidecar.identity.workload import WorkloadIdentity
from sidecar.mcp.pins import PinStore
from sidecar.policy.source import load_policy_dir
from sidecar.state import StateError
from sidecar.state.offloop import off_loop
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = ["AuthZenServer"]

CALLER = web.RequestKey("caller", str)

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
SEARCH = "/access/v1/search/"
READY_TIMEOUT_S = 30.0  # the first X.509-SVID, before the TLS listener can serve
_DECIDE_S = 5.0  # each evaluation's deadline (policy.timeout_ms bounds the engine within it)


class AuthZenServer:
    def __init__(
        self,
        settings: Settings,
        asserted: AssertedCalls,
        identity: WorkloadIdentity | None,
        pins: PinStore | None = None,
    ) -> None:
        self._settings = settings
        self._pins = pins  # the MCP servers' pinned tools (None: no MCP servers)
        self._tokens = PageTokens()  # a key of this process: a restart ends every paging
        self._config = settings.authzen
        self._asserted = asserted  # the adapter: decide-only, for an asserted subject
        self._identity = identity
        self._runner: web.AppRunner | None = None
        self._tls: ssl.SSLContext | None = None
        self.address = ""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/.well-known/authzen-configuration", self._metadata)
        app.router.add_post(EVALUATION, self._evaluation)
        app.router.add_post(EVALUATIONS, self._evaluations)
        for kind in KINDS:
            app.router.add_post(SEARCH + kind, self._searcher(kind))
        self._app = app

    async def start(self) -> None:
        listen = self._config.listen
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix://").removeprefix("unix:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            old = os.umask(0o177)  # never briefly open to others before the chmod
            try:
                site: web.BaseSite = web.UnixSite(self._runner, str(path))
                await site.start()
            finally:
                os.umask(old)
            path.chmod(int(self._config.socket_mode, 8))
            self.address = f"unix:{path}"
        else:
            if self._identity is None:
                raise RuntimeError("authzen.listen on TCP needs the Workload API (mTLS)")
            # The first SVID may still be on its way from the Workload API (a race at start).
            if not await asyncio.to_thread(self._identity.wait_ready, READY_TIMEOUT_S):
                raise IdentityError(
                    f"no X.509-SVID within {READY_TIMEOUT_S:.0f}s: the AuthZEN listener serves "
                    "mutual TLS with it",
                    code="identity_not_ready",
                )
            self._tls = server_context(self._identity.snapshot())
            self._identity.subscribe(self._rotate)
            host, _, port = listen.rpartition(":")
            site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self._tls)
            await site.start()
            bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
            self.address = f"{host}:{bound[1]}"
        log.info("authzen API listening", extra={"address": self.address})

    def _rotate(self, snapshot: Any) -> None:
        """New handshakes use the rotated SVID and bundle (the context is replaced in place)."""
        if self._tls is not None:
            self._tls.load_verify_locations(cadata=snapshot.bundle_pem().decode("ascii"))
            load_svid(self._tls, snapshot)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- HTTP -----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-ID", "")
        try:
            caller = self._caller(request)
            if caller is None:
                response: web.StreamResponse = _error(
                    403, "this caller may not ask (authzen.callers)"
                )
            else:
                request[CALLER] = caller
                response = await handler(request)
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason or "request refused")
        except SearchError as exc:
            response = _error(exc.status, str(exc))
        except AuthZenRequestError as exc:
            response = _error(400, str(exc))
        except Exception:
            log.exception("authzen request failed")
            response = _error(500, "internal error")
        if request_id:
            response.headers["X-Request-ID"] = request_id[:200]
        return response

    def _caller(self, request: web.Request) -> str | None:
        transport = request.transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:  # the unix socket: the kernel checked its mode at connect
            sock = transport.get_extra_info("socket")
            if sock is None or sock.family != socket.AF_UNIX:
                return None
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            return f"unix:uid={uid}"
        cert = ssl_object.getpeercert() or {}
        uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
        if len(uris) == 1 and uris[0] in self._config.callers:
            return uris[0]
        return None

    async def _metadata(self, request: web.Request) -> web.Response:
        base = self._config.pdp_url or (
            f"https://{self.address}"
            if not self.address.startswith("unix:")
            else "https://localhost"
        )
        return web.json_response(
            {
                "policy_decision_point": base,
                "access_evaluation_endpoint": base + EVALUATION,
                "access_evaluations_endpoint": base + EVALUATIONS,
                **{f"search_{kind}_endpoint": base + SEARCH + kind for kind in KINDS},
            }
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise AuthZenRequestError("Content-Type must be application/json")
        raw = await request.read()
        try:
            body = loads_strict(raw, "the body")
        except StrictJsonError as exc:
            raise AuthZenRequestError(f"{exc} (not valid JSON)") from exc
        if not isinstance(body, dict):
            raise AuthZenRequestError("the body must be a JSON object")
        return body

    async def _evaluation(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        catalog = await self._catalog(body)
        return web.json_response(await self._decide(body, request[CALLER], catalog))

    def _searcher(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await self._body(request)
            catalog = await self._catalog(body)
            caller = request[CALLER]
            agents = await off_loop(self._subjects) if kind == "subject" else []

            async def decide(item: dict[str, Any]) -> dict[str, Any]:
                return await self._decide(item, caller, catalog, rpc="AuthZENSearch")

            answer = await search(
                kind,
                body,
                catalog=catalog,
                subjects=lambda: agents,
                caller=caller,
                tokens=self._tokens,
                max_evaluations=self._config.max_evaluations,
                decide=decide,
            )
            return web.json_response(answer)

        return handle

    async def _catalog(self, body: dict[str, Any]) -> Catalog:
        """The catalog now: configuration, and the pins read from the state store when the
        request names an MCP tool (so a state outage never touches tool and model answers)."""
        pins: dict[str, str] = {}
        if self._pins is not None and _names_mcp_tools(body):
            try:
                got = await off_loop(self._pins.all)
            except StateError as exc:
                log.warning("MCP pins unreadable", extra={"error": type(exc).__name__})
                raise SearchError(503, "the state store (MCP tool pins) is unavailable") from exc
            pins = {name: pin.hash for name, pin in got.items()}
        return Catalog(self._settings, pins)

    def _subjects(self) -> list[str]:
        """The agents a subject search considers: those the policy's data names."""
        policy = self._settings.policy
        if policy.engine != "embedded":
            raise SearchError(
                501,
                "subject search needs the policy's data (policy.engine: embedded); OPA's data "
                "is not read from here",
            )
        return subjects_in(load_policy_dir(policy.dir).data)

    async def _evaluations(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        items, semantic = evaluations_of(body, self._config.max_evaluations)
        catalog = await self._catalog(body)
        if not isinstance(body.get("evaluations"), list) or not body["evaluations"]:
            return web.json_response(await self._decide(items[0], request[CALLER], catalog))
        answers = []
        for item in items:
            answer = await self._decide(item, request[CALLER], catalog)
            answers.append(answer)
            if semantic == "deny_on_first_deny" and not answer["decision"]:
                break
            if semantic == "permit_on_first_permit" and answer["decision"]:
                break
        return web.json_response({"evaluations": answers})

    async def _decide(
        self, item: dict[str, Any], caller: str, catalog: Catalog, rpc: str = "AuthZEN"
    ) -> dict[str, Any]:
        try:
            evaluation = parse_evaluation(item, catalog)
        except EvaluationError as exc:
            return error_decision(exc)
        result = await self._asserted.evaluate(
            rpc,
            evaluation.subject,
            evaluation.action,
            user=evaluation.user,
            caller=caller,
            time_remaining=_DECIDE_S,
        )
        return to_decision(result)


def _names_mcp_tools(body: dict[str, Any]) -> bool:
    items = body.get("evaluations")
    requests = [body, *items] if isinstance(items, list) else [body]
    return any(
        isinstance(r, dict) and isinstance(r.get("resource"), dict)
        and r["resource"].get("type") == "mcp_tool"
        for r in requests
    )  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")
