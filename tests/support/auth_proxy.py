"""An authenticating reverse proxy for tests, following oauth2-proxy's conventions.

A sign-in page (``/oauth2/sign_in``) stands in for the identity provider: it takes a user
and their groups and sets a session cookie. A request without a session is sent there with
the page it asked for (``rd``, as oauth2-proxy does); after sign-in the proxy hands that return
to the console's ``/login?next=...`` (as a proxy with one fixed post-sign-in URL would), and
the console decides whether to follow it. Every other request needs the cookie and is passed
to the upstream with ``X-Forwarded-Email``, ``X-Forwarded-User`` and ``X-Forwarded-Groups``
set from the session; whatever ``X-Forwarded-*`` the browser sent is dropped. Responses are
streamed (server-sent events pass through).

The upstream is ``http://HOST:PORT`` or ``unix:/PATH`` (oauth2-proxy's ``--upstream=unix://``);
with ``secret`` the proxy proves itself by sending it in ``secret_header`` (what a proxy that
can set a request header does), and drops any the browser sent.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import threading
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

__all__ = ["AuthProxy"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


class AuthProxy:
    def __init__(
        self,
        upstream: str,
        *,
        secret: str = "",
        secret_header: str = "X-Console-Proxy-Secret",
        port: int = 0,
    ) -> None:
        self._port = port  # 0: any free one; fixed when links to the console are made first
        self._unix = upstream.removeprefix("unix://").removeprefix("unix:")
        if upstream.startswith("unix:"):
            upstream = "http://console.local"
        else:
            self._unix = ""
        self.upstream = upstream.rstrip("/")
        self._secret = secret
        self._secret_header = secret_header
        self.sessions: dict[str, tuple[str, str]] = {}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def start(self) -> AuthProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        connector = aiohttp.UnixConnector(path=self._unix) if self._unix else None
        self._client = aiohttp.ClientSession(auto_decompress=False, connector=connector)
        app = web.Application()
        app.router.add_get("/oauth2/sign_in", self._form)
        app.router.add_post("/oauth2/sign_in", self._sign_in)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        async def stop() -> None:
            if self._client is not None:
                await self._client.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _form(self, request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=(
                "<!doctype html><title>Sign in</title><form method=post>"
                f'<input type=hidden name=rd value="{html.escape(request.query.get("rd", ""))}">'
                "<label for=user>Email</label><input id=user name=user>"
                "<label for=groups>Groups</label><input id=groups name=groups>"
                "<button type=submit>Sign in</button></form>"
            ),
        )

    async def _sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        session = secrets.token_urlsafe(16)
        self.sessions[session] = (str(form["user"]), str(form.get("groups", "")))
        back = str(form.get("rd", "")) or "/"
        response = web.HTTPSeeOther("/login?" + urlencode({"next": back}))
        response.set_cookie("_oauth2_proxy", session, httponly=True, samesite="Lax")
        raise response

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.cookies.get("_oauth2_proxy", ""))
        if session is None:
            raise web.HTTPFound("/oauth2/sign_in?" + urlencode({"rd": request.path_qs}))
        user, groups = session
        headers: dict[str, Any] = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP
            and not k.lower().startswith("x-forwarded-")
            and k.lower() != self._secret_header.lower()
        }
        headers |= {
            "X-Forwarded-Email": user,
            "X-Forwarded-User": user.split("@")[0],
            "X-Forwarded-Groups": groups,
            "Host": request.host,  # oauth2-proxy passes the host header on
        }
        if self._secret:
            headers[self._secret_header] = self._secret
        assert self._client is not None
        body = await request.read()
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    response.headers[k] = v
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # the browser left (a live page closed)
            return response
