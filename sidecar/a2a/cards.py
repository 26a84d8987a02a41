"""Peer agent cards, fetched, verified and pinned (docs/a2a.md "Agent cards").

Each peer's card is fetched from ``URL/.well-known/agent-card.json``: no redirects, at most
:data:`MAX_CARD_BYTES`, within the peer's ``timeout_s``, read by the strict JSON reader, of the
shape card_shape.py accepts. Over https with the peer's ``spiffe_id`` configured, the
connection presents the sidecar's X.509-SVID and trusts only the SPIFFE bundle (or
``ca_file``, or the system's CAs, without a Workload API), and the server's certificate must
name the peer's SPIFFE ID in every one of these modes. What is kept, pinned and served is the
card's signed form (``signed_content``), the digest taken over the same. A signature is
verified wherever the card carries one and is required when the peer has
``require_signed_card`` or ``card_keys``.

The first verified card is pinned. A later card with another digest is *changed*: the agent
and policy keep seeing the pinned card and skills (``changed: true`` in the policy input, so
the baseline refuses the call with ``peer_card_changed``) until an operator accepts the new
digest. Cards are fetched again after ``ttl_s`` and on demand (:meth:`CardBook.refresh`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from sidecar.a2a.card_shape import card_digest, rewrite_for_agent, skill_ids, validate_card
from sidecar.a2a.card_signature import Verified, load_card_keys, signed_content, verify_card
from sidecar.a2a.errors import CardError, CardSignatureError
from sidecar.a2a.peer_tls import ServerIdentityMismatch, SpiffeConnector
from sidecar.a2a.pins import CardPin, CardPinStore, PinCache
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.state.offloop import off_loop
from sidecar.strict_json import StrictJsonError, loads_strict

__all__ = [
    "CARD_PATH",
    "MAX_CARD_BYTES",
    "CardBook",
    "FetchedCard",
    "PinnedCard",
    "build_cards",
    "rewrite_for_agent",
]

log = logging.getLogger(__name__)

CARD_PATH = "/.well-known/agent-card.json"
_FETCH = object()  # refresh(): fetch whatever is cached
MAX_CARD_BYTES = 256 * 1024


@dataclass(frozen=True)
class FetchedCard:
    """The card the peer serves now, verified."""

    card: dict[str, Any]
    digest: str
    signed: bool
    signer: str
    fetched_at: float  # monotonic


@dataclass(frozen=True)
class PinnedCard:
    """What the agent and policy see of a peer: the PINNED card and skills, with the digest
    of the card the peer serves now."""

    peer: str
    card: dict[str, Any]  # the pinned card
    skills: tuple[str, ...]  # the pinned card's skill ids
    digest: str  # of the card the peer serves now
    pinned_digest: str
    signed: bool
    signer: str
    pinned_by: str
    pinned_ns: int
    current: dict[str, Any]  # the card the peer serves now (for the operator's review)

    @property
    def changed(self) -> bool:
        return self.digest != self.pinned_digest

    def current_skills(self) -> tuple[str, ...]:
        """The skill ids of the card the peer serves now (not what policy sees)."""
        return skill_ids(self.current)

    def policy_input(self) -> dict[str, Any]:
        """``action.card`` of the policy input (docs/policy-contract.md)."""
        return {
            "digest": self.digest,
            "pinned_digest": self.pinned_digest,
            "changed": self.changed,
            "signed": self.signed,
            "signer": self.signer,
            "skills": list(self.skills),
        }

    def for_agent(self, base_url: str) -> dict[str, Any]:
        """The pinned card as the agent gets it: every interface at ``base_url``."""
        return rewrite_for_agent(self.card, base_url)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or at most ``limit + 1`` bytes of it (enough to know it is too large)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


class CardBook:
    """Every configured peer's card: fetched, verified, pinned. One per sidecar."""

    def __init__(
        self,
        peers: Mapping[str, A2aPeerSettings],
        pins: CardPinStore,
        *,
        snapshot: Callable[[], Any] | None = None,
        ttl_s: float = 300.0,
    ) -> None:
        self.peers = dict(peers)
        self.pins = pins
        self._snapshot = snapshot
        self._ttl_s = ttl_s
        # Read at start: a missing or bad card_keys file stops the sidecar, not a call.
        self._keys = {
            name: load_card_keys(peer.card_keys) if peer.card_keys is not None else {}
            for name, peer in self.peers.items()
        }
        self._fetched: dict[str, FetchedCard] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        # Pins served from memory for at most pins.PIN_CACHE_S (docs/a2a.md "Agent cards").
        self._pin_cache = PinCache()

    def _peer(self, name: str) -> A2aPeerSettings:
        peer = self.peers.get(name)
        if peer is None:
            raise CardError(
                f"no A2A peer {name!r} is configured", code="unknown_peer", outcome="unknown_peer"
            )
        return peer

    async def card_for(self, name: str) -> PinnedCard:
        """The peer's pinned card, with the current card's digest (fetched again after the
        TTL). Raises :class:`CardError` when no verified card can be had."""
        fetched = self._fetched.get(name)
        if fetched is None or time.monotonic() - fetched.fetched_at >= self._ttl_s:
            return await self.refresh(name, seen=fetched)
        pin = self._pin_cache.get(name)
        if pin is None:
            pin = await off_loop(self.pins.get, name)
            self._pin_cache.put(pin, name)
        return self._view(name, fetched, pin)

    async def refresh(self, name: str, *, seen: Any = _FETCH) -> PinnedCard:
        """Fetch and verify the peer's card now; pin it when the peer has no pin yet. With
        ``seen`` (what the caller found stale), a refresh another call made meanwhile is used."""
        peer = self._peer(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            current = self._fetched.get(name)
            if seen is not _FETCH and current is not None and current is not seen:
                fetched = current  # another call refreshed while this one waited
            else:
                try:
                    fetched = await self._fetch(name, peer)
                except CardError as exc:
                    if exc.outcome != "peer_unavailable" or current is None:
                        raise
                    # The card endpoint is briefly away: keep the verified card, try later.
                    log.warning("A2A card refresh failed", extra={"peer": name, "code": exc.code})
                    fetched = dataclasses.replace(current, fetched_at=time.monotonic())
                self._fetched[name] = fetched
            pin = await off_loop(self.pins.pin_first, name, fetched.digest, fetched.card)
            self._pin_cache.put(pin, name)
        return self._view(name, fetched, pin)

    def _view(self, name: str, fetched: FetchedCard, pin: CardPin | None) -> PinnedCard:
        if pin is None:
            raise CardError(f"peer {name!r} has no pinned card", code="card_unpinned")
        return PinnedCard(
            peer=name,
            card=pin.card,
            skills=skill_ids(pin.card),
            digest=fetched.digest,
            pinned_digest=pin.digest,
            signed=fetched.signed,
            signer=fetched.signer,
            pinned_by=pin.pinned_by,
            pinned_ns=pin.pinned_ns,
            current=fetched.card,
        )

    async def accept(
        self, name: str, digest: str, by: str, *, reviewed: dict[str, Any] | None = None
    ) -> tuple[PinnedCard, str]:
        """Pin the peer to the card whose digest is ``digest`` (what the operator reviewed).
        With ``reviewed`` (the card the operator was shown), exactly that card is pinned: it is
        content-addressed, so a refresh between the review and the pin cannot change what is
        pinned (it must be a card this book fetched and verified: the admin service passes
        ``PinnedCard.current``). Without it, the card last fetched (fetched now if it is not
        ``digest``). Returns the new view and the digest pinned before."""
        if reviewed is not None:
            if card_digest(reviewed) != digest:
                raise CardError(
                    f"the card reviewed for {name} is not {digest}",
                    code="card_digest_mismatch",
                )
            card = signed_content(reviewed)
        else:
            fetched = self._fetched.get(name)
            if fetched is None or fetched.digest != digest:
                await self.refresh(name)
                fetched = self._fetched[name]
            if fetched.digest != digest:
                raise CardError(
                    f"the card of {name} is now {fetched.digest}, not the {digest} you "
                    "reviewed: review it again",
                    code="card_digest_mismatch",
                )
            card = fetched.card
        before = await off_loop(self.pins.get, name)
        pin = await off_loop(self.pins.accept, name, digest, card, by)
        self._pin_cache.put(pin, name)
        current = self._fetched.get(name)
        if current is None:
            current = FetchedCard(card, digest, False, "", time.monotonic())
        return self._view(name, current, pin), before.digest if before else ""

    def extended_for_agent(self, name: str, card: Any, base_url: str) -> dict[str, Any]:
        """The peer's extended card (``GetExtendedAgentCard``) as the agent gets it: checked
        like the public card (shape; signature verified when it carries one, required when the
        peer requires signed cards), then built from the signed form's allow-list with every
        interface at ``base_url``. It is not pinned: policy decides on the public card."""
        peer = self._peer(name)
        try:
            checked = validate_card(card)
        except CardError as exc:
            raise CardError(
                f"the extended card of {name}: {exc}", code=exc.code, outcome=exc.outcome
            ) from exc
        self._verify(name, peer, checked)
        return rewrite_for_agent(signed_content(checked), base_url)

    async def list(self) -> list[PinnedCard | CardError]:
        """Every peer's view, fetched now (what the operator reviews is what the peer
        serves), or why it cannot be had."""
        out: list[PinnedCard | CardError] = []
        for name in sorted(self.peers):
            try:
                out.append(await self.refresh(name))
            except CardError as exc:
                exc.peer = name  # type: ignore[attr-defined]
                out.append(exc)
        return out

    async def _fetch(self, name: str, peer: A2aPeerSettings) -> FetchedCard:
        url = peer.url.rstrip("/") + CARD_PATH
        https = urlsplit(url).scheme == "https"
        context, expect_id = self._tls(peer) if https else (False, "")
        timeout = aiohttp.ClientTimeout(total=peer.timeout_s)
        if expect_id:  # its own connection: the SVID rotates, and the server's ID is checked
            session = aiohttp.ClientSession(
                connector=SpiffeConnector(expect_id), cookie_jar=aiohttp.DummyCookieJar()
            )
        else:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            session = self._session
        try:
            async with session.get(
                url,
                ssl=context,
                timeout=timeout,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise CardError(
                        f"the card of {name}: HTTP {response.status}",
                        code="card_http_status",
                        outcome="peer_bad_response",
                    )
                body = await _read_bounded(response, MAX_CARD_BYTES)
        except ServerIdentityMismatch as exc:
            raise CardError(
                f"the card server of {name} is not {expect_id}", code="card_server_mismatch"
            ) from exc
        except TimeoutError as exc:
            raise CardError(
                f"the card of {name} did not arrive within {peer.timeout_s} s",
                code="card_timeout",
                outcome="peer_unavailable",
            ) from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise CardError(
                f"the card of {name} cannot be fetched ({type(exc).__name__})",
                code="card_unavailable",
                outcome="peer_unavailable",
            ) from exc
        finally:
            if session is not self._session:
                await session.close()
        if len(body) > MAX_CARD_BYTES:
            raise CardError(
                f"the card of {name} is larger than {MAX_CARD_BYTES} bytes",
                code="card_too_large",
                outcome="peer_bad_response",
            )
        try:
            card = validate_card(loads_strict(body, "the card", quote=False))
        except StrictJsonError as exc:
            raise CardError(str(exc), code="card_malformed", outcome="peer_bad_response") from exc
        verified = self._verify(name, peer, card)
        # Exactly the signed form is kept, pinned, digested and served: nothing the signature
        # does not cover (unknown fields of a 1.0 card, empties added after signing).
        kept = signed_content(card)
        return FetchedCard(
            card=kept,
            digest=card_digest(kept),
            signed=verified is not None,
            signer=verified.signer if verified is not None else "",
            fetched_at=time.monotonic(),
        )

    def _verify(self, name: str, peer: A2aPeerSettings, card: dict[str, Any]) -> Verified | None:
        keys = self._keys.get(name, {})
        required = peer.require_signed_card or bool(keys)
        if not card.get("signatures") and not required:
            return None
        snapshot = self._snapshot() if self._snapshot is not None else None
        try:
            return verify_card(
                card,
                keys=keys,
                spiffe_id=peer.spiffe_id,
                bundles=snapshot.bundles if snapshot is not None else {},
            )
        except CardSignatureError as exc:
            raise CardSignatureError(f"the card of {name}: {exc}", code=exc.code) from exc

    def _tls(self, peer: A2aPeerSettings) -> tuple[ssl.SSLContext | bool, str]:
        """The TLS context for an https card fetch, and the SPIFFE ID the server must be.
        A configured ``spiffe_id`` is required of the server's certificate in every https
        mode: with the SVID (SPIFFE bundle), with ``ca_file`` and with the system's CAs."""
        if peer.spiffe_id and self._snapshot is not None and peer.ca_file is None:
            from sidecar.identity.credentials import mtls_context

            context = mtls_context(self._snapshot())
            context.check_hostname = False  # SVIDs name a SPIFFE ID, checked after the handshake
            return context, peer.spiffe_id
        if peer.ca_file is not None:
            return ssl.create_default_context(cafile=str(peer.ca_file)), peer.spiffe_id
        if peer.spiffe_id:
            return ssl.create_default_context(), peer.spiffe_id
        return True, ""

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def build_cards(settings: Any, state: Any, identity: Any) -> CardBook | None:
    """The card book of ``settings.a2a_peers`` over the state store (``None`` without
    peers). ``identity`` (a WorkloadIdentity, or None) gives the SVID and trust bundles."""
    peers = getattr(settings, "a2a_peers", None) or {}
    if not peers:
        return None
    snapshot = identity.snapshot if identity is not None else None
    # ``a2a.card_ttl_s`` when the settings have it (A2aSettings), else 300 s.
    ttl_s = float(getattr(getattr(settings, "a2a", None), "card_ttl_s", 300.0))
    return CardBook(peers, CardPinStore(state), snapshot=snapshot, ttl_s=ttl_s)
