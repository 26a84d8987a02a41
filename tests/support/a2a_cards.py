"""Real peers serving A2A agent cards for the card tests: a small aiohttp server whose answer
a test changes at will (:class:`CardServer`, HTTP or HTTPS with an X.509-SVID), and the
official a2a-sdk's own card route signing with the SDK's signer (:class:`SdkCardServer`)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["CardServer", "SdkCardServer", "card", "jwk", "write_jwks"]


def card(*skills: str, name: str = "Billing", url: str = "http://peer.invalid/a2a") -> dict:
    """A minimal A2A 1.0 card with these skill ids."""
    return {
        "name": name,
        "description": "Refunds and invoices",
        "version": "1.0.0",
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {"streaming": True},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [
            {"id": s, "name": s.title(), "description": f"does {s}", "tags": ["billing"]}
            for s in skills
        ],
    }


def _b64(n: int, size: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(size, "big")).rstrip(b"=").decode()


def jwk(kid: str, public_key: Any) -> dict[str, Any]:
    """The public JWK of an EC P-256, RSA or Ed25519 key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "x": _b64(numbers.x, 32),
            "y": _b64(numbers.y, 32),
        }
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        size = (numbers.n.bit_length() + 7) // 8
        return {"kty": "RSA", "kid": kid, "n": _b64(numbers.n, size), "e": _b64(numbers.e, 3)}
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    raw = public_key.public_bytes_raw()
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": kid,
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
    }


def write_jwks(path: Any, *keys: tuple[str, Any]) -> Any:
    path.write_text(json.dumps({"keys": [jwk(kid, key) for kid, key in keys]}))
    return path


class CardServer:
    """``GET /.well-known/agent-card.json`` answers ``body`` with ``status`` (and a
    ``Location`` header when ``location`` is set); ``hang`` makes it wait until the server
    stops. ``requests`` counts card fetches. ``GET /elsewhere`` always answers 200 with
    ``body`` (a redirect target that would be accepted). ``POST /`` answers any JSON-RPC
    request with ``extended`` as its result (a peer's ``GetExtendedAgentCard``)."""

    def __init__(self, served: dict | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.body = json.dumps(served or card("refund", "lookup")).encode()
        self.status = 200
        self.content_type = "application/json"
        self.hang = False
        self.location = ""
        self.requests = 0
        self.extended: Any = None
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopped = asyncio.Event()
        self.port = 0

    def serve(self, served: dict) -> None:
        self.body = json.dumps(served).encode()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    async def _card(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.hang:
            await self._stopped.wait()
        headers = {"Location": self.location} if self.location else None
        return web.Response(
            body=self.body, status=self.status, content_type=self.content_type, headers=headers
        )

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return web.Response(body=self.body, content_type="application/json")

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        rpc = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": rpc.get("id"), "result": self.extended})

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/.well-known/agent-card.json", self._card)
        app.router.add_get("/elsewhere", self._elsewhere)
        app.router.add_post("/", self._rpc)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock, ssl_context=self._tls).start()
        return runner

    def __enter__(self) -> CardServer:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._stopped.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class SdkCardServer:
    """The official SDK's card route (Starlette under uvicorn), signing the card with the
    SDK's own signer on every request (as an SDK agent does with ``card_modifier``)."""

    def __init__(self, served: dict, key: Any, *, kid: str, alg: str) -> None:
        import uvicorn
        from a2a.server.routes.agent_card_routes import create_agent_card_routes
        from a2a.types import AgentCard
        from a2a.utils.signing import create_agent_card_signer
        from google.protobuf.json_format import ParseDict
        from starlette.applications import Starlette

        signer = create_agent_card_signer(key, {"kid": kid, "alg": alg, "jku": None, "typ": "JOSE"})

        async def sign(unsigned: AgentCard) -> AgentCard:
            fresh = AgentCard()
            fresh.CopyFrom(unsigned)
            return signer(fresh)

        routes = create_agent_card_routes(ParseDict(served, AgentCard()), card_modifier=sign)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SdkCardServer:
        self._thread.start()
        ready = threading.Event()
        for _ in range(400):  # bounded poll for readiness
            if self._server.started:
                break
            ready.wait(0.05)
        assert self._server.started, "the SDK card server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
