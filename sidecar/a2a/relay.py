"""HTTP to the peer agents: a unary JSON-RPC exchange, or an SSE stream read event by event,
each bounded in size (the cards are fetched by sidecar/a2a/cards.py). Nothing here decides:
the guarded call (sidecar/calls/a2a.py) asks policy first and bounds the whole call in time.

The relay's keep-alive pools, TLS (mTLS with the X.509-SVID, rotated) and credentials are
the targets' own code (sidecar/relay, sidecar/identity/credentials.py, the token exchanger),
given one target per peer (``a2a:NAME``, :meth:`A2aPeerSettings.as_target`); there is no
second credential path. Redirects are never followed. A peer with ``spiffe_id`` over https,
whatever its credential, is verified against the SPIFFE bundle (re-read after rotation) and
must present exactly that SPIFFE ID, checked before any request byte is sent (peer_tls.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from sidecar import __version__
from sidecar.a2a.peer_tls import ServerIdentityMismatch, connectors, wire_peer_tls
from sidecar.a2a.protocol import A2A_VERSION_HEADER, METHODS
from sidecar.a2a.rest_binding import HTTP_JSON, JSON_KINDS, RestRequest, to_rest
from sidecar.a2a.settings import A2aPeerSettings, peer_target
from sidecar.a2a.sse_split import SseSplitter, hidden_break
from sidecar.calls.a2a import PeerFailure
from sidecar.calls.relaying import RelayGate
from sidecar.identity import UpstreamCredentials, WorkloadIdentity
from sidecar.identity.credentials import wire_mtls
from sidecar.relay import HttpRelay
from sidecar.strict_json import StrictJsonError, loads_strict
from sidecar.users import TokenExchanger

__all__ = ["PeerError", "PeerRelay"]

_USER_AGENT = f"agent-sidecar/{__version__}"


class PeerError(PeerFailure):
    """The peer could not be reached or answered unusably (``code``: peer_unavailable,
    peer_identity_mismatch, peer_timeout, peer_bad_response, peer_response_too_large);
    ``reached``: whether any byte of the request may have reached it."""


class PeerRelay:
    """One keep-alive pool and one credential per peer, on the event loop."""

    def __init__(
        self,
        peers: Mapping[str, A2aPeerSettings],
        *,
        identity: WorkloadIdentity | None,
        max_concurrency: int,
        per_peer: int,
    ) -> None:
        self._peers = peers
        targets = {peer_target(name): peer.as_target() for name, peer in peers.items()}
        self.http = HttpRelay(
            targets, max_response_bytes=4 * 1024 * 1024, connectors=connectors(peers)
        )
        if identity is not None:
            wired = wire_peer_tls(self.http, peers, identity)
            wire_mtls(self.http, {n: t for n, t in targets.items() if n not in wired}, identity)
        self.gate = RelayGate(
            exchange_targets=frozenset(
                name for name, t in targets.items() if t.auth.type == "token-exchange"
            ),
            credentials=UpstreamCredentials(targets, identity),
            exchanger=TokenExchanger(targets, identity),
            max_concurrency=max_concurrency,
            per_target=per_peer,
        )

    async def close(self) -> None:
        await self.gate.aclose()
        await self.http.close()

    def _headers(self, version: str, extra: Mapping[str, str], stream: bool) -> dict[str, str]:
        headers = {
            "User-Agent": _USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            A2A_VERSION_HEADER: version,
        }
        headers.update(extra)
        return headers

    async def exchange(
        self,
        peer: str,
        body: dict[str, Any],
        *,
        version: str,
        headers: Mapping[str, str],
        stream: bool,
        binding: str = "jsonrpc",
    ) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` to the peer; yield its JSON-RPC answer, or each SSE event's
        JSON-RPC message. Each is bounded by the peer's ``max_response_bytes``. The caller
        bounds the whole exchange in time; closing the iterator closes the connection (the
        peer's request is cancelled with the agent's). With ``binding`` http_json the request
        goes to the peer's REST route and every answer comes back as JSON-RPC
        (rest_binding.py); a request that cannot be translated fails before connecting."""
        settings = self._peers[peer]
        limit = settings.max_response_bytes
        rest: RestRequest | None = None
        verb, url = "POST", URL(settings.url)
        data: bytes | None = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        if binding == HTTP_JSON:
            rest = to_rest(body, METHODS[body["method"]][0], version)
            # the base as yarl encodes it (an IDN host); the path and query rest_binding's, as is
            full = rest.url(str(URL(settings.url)))
            verb, url, data = rest.verb, URL(full, encoded=True), rest.data()
        sent = False
        try:
            async with self.http.session(peer_target(peer)) as session:
                sent = True
                async with session.request(
                    verb,
                    url,
                    data=data,
                    headers=self._headers(version, headers, stream),
                    timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
                    allow_redirects=False,
                ) as response:
                    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if response.status != 200 and rest is not None and kind in JSON_KINDS:
                        raw = await _bounded(response, limit, "the peer's error")
                        yield rest.error(response.status, raw)
                        return
                    if response.status != 200:
                        raise PeerError(
                            f"the peer answered HTTP {response.status}",
                            code="peer_bad_response",
                            reached=True,
                        )
                    if kind == "text/event-stream":
                        read = rest.event if rest is not None else None
                        async for event in _sse_events(response, limit, read):
                            yield event
                        return
                    if kind != "application/json" and not (rest and kind in JSON_KINDS):
                        raise PeerError(  # not quoted: the header is the peer's text
                            "the peer's answer is not labelled JSON or an event stream",
                            code="peer_bad_response",
                            reached=True,
                        )
                    raw = await _bounded(response, limit, "the peer's answer")
                    yield rest.answer(raw) if rest is not None else _message(raw)
        except (PeerError, GeneratorExit):
            raise
        except ServerIdentityMismatch as exc:
            raise PeerError(
                f"the peer's TLS server is not {settings.spiffe_id} ({exc.presented or 'none'})",
                code="peer_identity_mismatch",
                reached=False,
            ) from None
        except TimeoutError:  # aiohttp's own bound (the call's is the caller's asyncio.timeout)
            raise PeerError(
                f"the peer did not finish within {settings.timeout_s:.1f}s",
                code="peer_timeout",
                reached=sent,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise PeerError(
                f"the peer is unreachable ({type(exc).__name__})",
                code="peer_unavailable",
                reached=False,
            ) from None
        except aiohttp.ClientError as exc:
            raise PeerError(
                f"the exchange with the peer failed ({type(exc).__name__})",
                code="peer_unavailable",
                reached=sent,
            ) from None


async def _bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            response.close()
            raise PeerError(
                f"{what} exceeds {limit} bytes", code="peer_response_too_large", reached=True
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _message(raw: bytes) -> dict[str, Any]:
    """One JSON-RPC response from the peer, read strictly."""
    try:
        value = loads_strict(raw, "the peer's answer", quote=False)  # nothing of the peer's
    except StrictJsonError as exc:
        raise PeerError(str(exc), code="peer_bad_response", reached=True) from None
    if not isinstance(value, dict) or ("result" not in value and "error" not in value):
        raise PeerError(
            "the peer's answer is not a JSON-RPC response", code="peer_bad_response", reached=True
        )
    return value


async def _sse_events(
    response: aiohttp.ClientResponse,
    limit: int,
    read: Callable[[bytes], dict[str, Any] | None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Each SSE event's ``data`` as a JSON-RPC message; an event larger than ``limit``, or a
    stream whose pending bytes pass it, ends the stream (``peer_response_too_large``).

    Line ends (CRLF, CR, LF) are normalised read by read, a trailing CR held back (its LF
    may come in the next read), and the framing's work is linear in the bytes read
    (sse_split.py); an event the stream ends inside of is a truncated answer
    (``peer_bad_response``), never silently dropped, and so is an event with a line break
    outside its data that an SSE client other than the sidecar splits at (sse_split.py: the
    agent's client must never be handed an event the sidecar read otherwise)."""
    read = read or _sse_block  # REST: RestRequest.event (rest_binding.py)
    framing = SseSplitter()  # linear in the bytes read, however they are split
    async for chunk in response.content.iter_any():
        for block in framing.feed(chunk):
            message = _read(read, block)
            if message is not None:
                yield message
        if framing.pending > limit:
            response.close()
            raise PeerError(
                f"a streamed event exceeds {limit} bytes",
                code="peer_response_too_large",
                reached=True,
            )
    blocks, rest = framing.finish()
    for block in blocks:
        message = _read(read, block)
        if message is not None:
            yield message
    if any(line.startswith(b"data:") for line in rest.split(b"\n")):
        raise PeerError(
            "the peer's stream ended inside an event", code="peer_bad_response", reached=True
        )


def _read(read: Callable[[bytes], dict[str, Any] | None], block: bytes) -> dict[str, Any] | None:
    """``block`` read by ``read``, unless a line of it other than ``data:`` holds a break
    the agent's SDK client splits at (sse_split.py): then the stream ends, fail closed."""
    if hidden_break(block):
        raise PeerError(
            "an event of the peer's stream has a hidden line break",
            code="peer_bad_response",
            reached=True,
        )
    return read(block)


def _sse_block(block: bytes) -> dict[str, Any] | None:
    """One event's JSON-RPC message (None for an event without data: a comment, a ping)."""
    data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return _message(b"\n".join(data)) if data else None
