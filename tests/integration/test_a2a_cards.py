"""Peer agent cards fetched, verified and pinned (issue 34, deliverable 2), from real peers over
real HTTP(S): a small aiohttp card server a test changes at will, and the official a2a-sdk's
card route signing with the SDK's signer. Pins in the real state store (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.a2a.card_shape import card_digest, rewrite_for_agent
from sidecar.a2a.card_signature import sign_card, sign_card_with_svid
from sidecar.a2a.cards import MAX_CARD_BYTES, CardBook
from sidecar.a2a.errors import CardError
from sidecar.a2a.pins import CardPinStore
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.identity.workload import Snapshot
from sidecar.state import open_state
from sidecar.state.settings import PostgresSettings, StateSettings
from tests.support.a2a_cards import CardServer, SdkCardServer, card, write_jwks

PEER_ID = "spiffe://demo.example/agent/billing"
SELF_ID = "spiffe://demo.example/agent/support"


def _book(state, peers: dict[str, A2aPeerSettings], **kwargs: Any) -> CardBook:
    return CardBook(peers, CardPinStore(state), **kwargs)


def _run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(scenario())


def _refused(book: CardBook, peer: str = "billing") -> CardError:
    async def go() -> CardError:
        try:
            await book.refresh(peer)
        except CardError as exc:
            return exc
        finally:
            await book.aclose()
        raise AssertionError("the card was accepted")

    return asyncio.run(go())


@pytest.fixture
def state(tmp_path):
    db = open_state(StateSettings(dir=tmp_path / "state"))
    yield db
    db.close()


@pytest.fixture
def peer():
    with CardServer() as server:
        yield server


def test_a2a_cards_first_card_is_pinned_and_policy_sees_its_skills(state, peer):
    book = _book(state, {"billing": A2aPeerSettings(url=peer.url)})

    async def scenario() -> Any:
        try:
            return await book.card_for("billing")
        finally:
            await book.aclose()

    view = _run(scenario)
    assert view.policy_input() == {
        "digest": view.pinned_digest,
        "pinned_digest": view.pinned_digest,
        "changed": False,
        "signed": False,
        "signer": "",
        "skills": ["refund", "lookup"],
    }
    assert view.digest.startswith("sha256:") and view.pinned_by == "first-seen"


def test_a2a_cards_a_changed_card_is_hidden_until_accepted(state, peer):
    book = _book(state, {"billing": A2aPeerSettings(url=peer.url)}, ttl_s=0)

    async def scenario() -> None:
        try:
            first = await book.card_for("billing")
            peer.serve(card("refund", "lookup", "wire_money"))  # a rug pull
            changed = await book.card_for("billing")
            assert changed.changed and changed.policy_input()["changed"] is True
            assert changed.skills == ("refund", "lookup")  # the pinned skills, not the new
            assert changed.pinned_digest == first.digest != changed.digest
            agent_view = changed.for_agent("http://127.0.0.1:8095/peers/billing")
            assert [s["id"] for s in agent_view["skills"]] == ["refund", "lookup"]
            with pytest.raises(CardError) as stale:
                await book.accept("billing", first.digest, "local:carol")
            assert stale.value.code == "card_digest_mismatch"
            accepted, before = await book.accept("billing", changed.digest, "local:carol")
            assert before == first.digest and not accepted.changed
            assert accepted.skills == ("refund", "lookup", "wire_money")
            assert accepted.pinned_by == "local:carol"
        finally:
            await book.aclose()

    _run(scenario)


def test_a2a_cards_pins_survive_a_restart(tmp_path, peer):
    settings = StateSettings(dir=tmp_path / "state")
    peers = {"billing": A2aPeerSettings(url=peer.url)}

    async def view_of(db) -> Any:
        book = _book(db, peers)
        try:
            return await book.card_for("billing")
        finally:
            await book.aclose()

    db = open_state(settings)
    first = asyncio.run(view_of(db))
    db.close()
    peer.serve(card("refund"))  # changed while the sidecar was down
    db = open_state(settings)
    again = asyncio.run(view_of(db))
    db.close()
    assert again.changed and again.pinned_digest == first.digest
    assert again.skills == ("refund", "lookup")


def test_a2a_cards_pins_in_postgres_are_shared_and_first_seen_wins(pg_server, tmp_path, peer):
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(pg_server.create_database(f"a2a_cards_{abs(hash(str(tmp_path))) % 10**8}"))
    dsn_file.chmod(0o600)
    settings = StateSettings(backend="postgres", postgres=PostgresSettings(dsn_file=dsn_file))
    peers = {"billing": A2aPeerSettings(url=peer.url)}
    one, two = open_state(settings), open_state(settings)  # two replicas of a fleet
    try:

        async def scenario() -> None:
            a, b = _book(one, peers, ttl_s=0), _book(two, peers, ttl_s=0)
            try:
                first = await a.card_for("billing")
                peer.serve(card("refund", "wire_money"))
                seen_by_b = await b.card_for("billing")  # B never saw the first card
                assert seen_by_b.changed and seen_by_b.pinned_digest == first.digest
                await a.accept("billing", seen_by_b.digest, "local:carol")
                after = await b.card_for("billing")
                assert not after.changed and after.skills == ("refund", "wire_money")
            finally:
                await a.aclose()
                await b.aclose()

        _run(scenario)
    finally:
        one.close()
        two.close()


def test_a2a_cards_sdk_signed_card_is_verified_and_re_signing_is_no_change(state, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    keys = write_jwks(tmp_path / "keys.json", ("billing-2026", key.public_key()))
    with SdkCardServer(card("refund"), key, kid="billing-2026", alg="ES256") as server:
        peers = {"billing": A2aPeerSettings(url=server.url, card_keys=keys)}
        book = _book(state, peers, ttl_s=0)

        async def scenario() -> None:
            try:
                first = await book.card_for("billing")
                again = await book.card_for("billing")  # a fresh ECDSA signature each time
                assert first.signed and first.signer == "billing-2026"
                assert not again.changed and again.digest == first.digest
            finally:
                await book.aclose()

        _run(scenario)
        other = write_jwks(
            tmp_path / "other.json",
            ("billing-2026", rsa.generate_private_key(65537, 2048).public_key()),
        )
        wrong = _book(state, {"billing": A2aPeerSettings(url=server.url, card_keys=other)})
        refused = _refused(wrong)
        assert (refused.code, refused.outcome) == ("card_signature_invalid", "peer_card_unverified")


def test_a2a_cards_unsigned_tampered_and_alg_none_cards_are_refused(state, peer, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    keys = write_jwks(tmp_path / "keys.json", ("k1", key.public_key()))
    required = {"billing": A2aPeerSettings(url=peer.url, require_signed_card=True)}
    assert _refused(_book(state, required)).code == "card_unsigned"
    with_keys = {"billing": A2aPeerSettings(url=peer.url, card_keys=keys)}
    assert _refused(_book(state, with_keys)).code == "card_unsigned"
    signed = sign_card(card("refund"), key, kid="k1")
    tampered = json.loads(json.dumps(signed))
    tampered["skills"][0]["id"] = "wire_money"
    peer.serve(tampered)
    assert _refused(_book(state, with_keys)).code == "card_signature_invalid"
    none = json.loads(json.dumps(signed))
    none["signatures"][0]["protected"] = "eyJhbGciOiJub25lIiwia2lkIjoiazEifQ"  # alg none
    none["signatures"][0]["signature"] = ""
    peer.serve(none)
    assert _refused(_book(state, with_keys)).code == "card_alg_refused"
    # Signed but not required, with nothing to verify it with: refused, not ignored.
    peer.serve(signed)
    plain = {"billing": A2aPeerSettings(url=peer.url)}
    assert _refused(_book(state, plain)).code == "card_key_unknown"
    view_book = _book(state, with_keys)

    async def ok() -> Any:
        try:
            return await view_book.card_for("billing")
        finally:
            await view_book.aclose()

    assert _run(ok).signer == "k1"


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "oversized": (b'{"name": "' + b"x" * MAX_CARD_BYTES + b'"}', "card_too_large"),
    "not json": (b"{not json", "card_malformed"),
    "duplicate key": (b'{"name": "a", "name": "b"}', "card_malformed"),
    "nan": (b'{"name": NaN}', "card_malformed"),
    "array": (b"[]", "card_malformed"),
    "no skills": (
        json.dumps({k: v for k, v in card().items() if k != "skills"}).encode(),
        "card_malformed",
    ),
    "skill without id": (
        json.dumps(card() | {"skills": [{"name": "x"}]}).encode(),
        "card_malformed",
    ),
    "duplicate skill": (json.dumps(card("refund", "refund")).encode(), "card_malformed"),
    "wrong types": (
        json.dumps(card("refund") | {"defaultInputModes": "text"}).encode(),
        "card_malformed",
    ),
    "no interface": (
        json.dumps({k: v for k, v in card("a").items() if k != "supportedInterfaces"}).encode(),
        "card_malformed",
    ),
    "signatures not list": (json.dumps(card("a") | {"signatures": {}}).encode(), "card_malformed"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a2a_cards_hostile_card_documents_are_refused(state, peer, name):
    body, code = BAD_BODIES[name]
    peer.body = body
    refused = _refused(_book(state, {"billing": A2aPeerSettings(url=peer.url)}))
    assert refused.code == code and refused.outcome == "peer_bad_response"


def test_a2a_cards_http_errors_redirects_and_hangs(state, peer):
    peers = {"billing": A2aPeerSettings(url=peer.url, timeout_s=0.5)}
    peer.status = 500
    assert _refused(_book(state, peers)).code == "card_http_status"
    peer.status, peer.location = 302, f"{peer.url}/elsewhere"  # to a card that is valid
    assert _refused(_book(state, peers)).code == "card_http_status"  # not followed
    assert peer.requests == 2  # the 500 and the 302: /elsewhere was never fetched
    peer.status, peer.location, peer.hang = 200, "", True
    hung = _refused(_book(state, peers))
    assert (hung.code, hung.outcome) == ("card_timeout", "peer_unavailable")
    down = {"billing": A2aPeerSettings(url="http://127.0.0.1:1", timeout_s=5)}
    assert _refused(_book(state, down)).outcome == "peer_unavailable"
    unknown = _book(state, peers)
    assert _refused(unknown, "nobody").code == "unknown_peer"


def test_a2a_cards_concurrent_calls_fetch_once_and_the_ttl_refetches(state, peer):
    async def scenario(ttl_s: float, sequential: int) -> list[Any]:
        book = _book(state, {"billing": A2aPeerSettings(url=peer.url)}, ttl_s=ttl_s)
        try:
            views = list(await asyncio.gather(*(book.card_for("billing") for _ in range(20))))
            for _ in range(sequential):
                views.append(await book.card_for("billing"))
            return views
        finally:
            await book.aclose()

    views = asyncio.run(scenario(3600, 3))
    assert peer.requests == 1 and len({v.digest for v in views}) == 1  # 23 calls, one fetch
    asyncio.run(scenario(0, 3))
    assert peer.requests == 1 + 1 + 3  # concurrent calls share a fetch; each later one refetches


def test_a2a_cards_a_card_endpoint_blip_keeps_the_verified_card(state, peer):
    book = _book(state, {"billing": A2aPeerSettings(url=peer.url, timeout_s=0.5)}, ttl_s=0)

    async def scenario() -> None:
        try:
            first = await book.card_for("billing")
            peer.hang = True
            again = await book.card_for("billing")
            assert again.digest == first.digest and not again.changed
            peer.hang, peer.body = False, b"{broken"
            with pytest.raises(CardError) as exc:  # a bad card is never papered over
                await book.card_for("billing")
            assert exc.value.code == "card_malformed"
        finally:
            await book.aclose()

    _run(scenario)


def _tls_server_context(authority, spiffe_id: str) -> ssl.SSLContext:
    issued = authority.issue_x509(spiffe_id)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED  # the sidecar must present its SVID
    context.load_verify_locations(cadata=authority.x509_bundle_pem.decode())
    directory = Path(__import__("tempfile").mkdtemp())
    (directory / "chain.pem").write_bytes(issued.chain_pem)
    (directory / "key.pem").write_bytes(issued.key_pem)
    context.load_cert_chain(directory / "chain.pem", directory / "key.pem")
    return context


def test_a2a_cards_https_peer_is_fetched_with_the_svid_and_an_svid_signed_card(state, authority):
    own = authority.issue_x509(SELF_ID)
    snapshot = Snapshot(SELF_ID, (own.leaf,), own.key, {"demo.example": (authority.ca_cert,)})
    peer_svid = authority.issue_x509(PEER_ID)
    peer_snapshot = Snapshot(PEER_ID, (peer_svid.leaf,), peer_svid.key, snapshot.bundles)
    signed = sign_card_with_svid(card("refund"), peer_snapshot)
    with CardServer(signed, tls=_tls_server_context(authority, PEER_ID)) as server:
        peers = {
            "billing": A2aPeerSettings(url=server.url, spiffe_id=PEER_ID, require_signed_card=True)
        }
        book = _book(state, peers, snapshot=lambda: snapshot)

        async def scenario() -> Any:
            try:
                return await book.card_for("billing")
            finally:
                await book.aclose()

        view = _run(scenario)
        assert view.signed and view.signer == PEER_ID
        mallory = "spiffe://demo.example/agent/mallory"
        wrong = {"billing": A2aPeerSettings(url=server.url, spiffe_id=mallory)}
        refused = _refused(_book(state, wrong, snapshot=lambda: snapshot))
        assert refused.code == "card_server_mismatch"


def test_a2a_cards_rewrite_points_every_interface_at_the_sidecar():
    base = "http://127.0.0.1:8095/peers/billing"
    v1 = card("refund") | {"signatures": [{"protected": "x", "signature": "y"}]}
    v1["supportedInterfaces"].append({"url": "https://peer/grpc", "protocolBinding": "GRPC"})
    out = rewrite_for_agent(v1, base)
    assert "signatures" not in out and "url" not in out
    assert [(i["url"], i["protocolBinding"]) for i in out["supportedInterfaces"]] == [
        (base, "JSONRPC")
    ]
    parsed = parse_agent_card(out)  # the official client reads the URL from here
    assert [i.url for i in parsed.supported_interfaces] == [base]
    v03 = {k: v for k, v in card("refund").items() if k != "supportedInterfaces"}
    v03 |= {
        "url": "https://peer/a2a",
        "preferredTransport": "GRPC",
        "additionalInterfaces": [{"url": "https://peer/rest", "transport": "HTTP+JSON"}],
    }
    out03 = rewrite_for_agent(v03, base)
    assert out03["url"] == base and out03["preferredTransport"] == "JSONRPC"
    assert out03["additionalInterfaces"] == [{"url": base, "transport": "JSONRPC"}]
    assert card_digest(v1) == card_digest(v1 | {"signatures": []})  # signatures not digested
