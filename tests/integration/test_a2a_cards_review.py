"""Regression tests for the review of the A2A agent cards (issue 34, deliverable 2; findings
review_a2 1-5): the agent's card is built from an allow-list (public and extended card), only
the signed form is pinned and served, an accept pins exactly the card reviewed and audited,
a configured SPIFFE ID is required of the card server in every https mode, a redirect to a
valid card is not followed, an accept that cannot be audited does not happen, and a
non-approver cannot accept. Real card servers over HTTP(S), real sidecars, real gRPC."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.client.transports.jsonrpc import parse_lenient
from a2a.types import AgentCard
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.json_format import ParseDict

from sidecar._proto.agentsidecar.v1 import a2a_pb2, a2a_pb2_grpc
from sidecar.a2a.admin import register
from sidecar.a2a.card_shape import card_digest, rewrite_for_agent
from sidecar.a2a.card_signature import sign_card, signed_content
from sidecar.a2a.cards import CardBook
from sidecar.a2a.errors import CardError
from sidecar.a2a.pins import CardPinStore
from sidecar.a2a.settings import A2aPeerSettings
from sidecar.approvals.client import AdminCallError, ApprovalsClient
from sidecar.audit.log import AuditLog
from sidecar.identity.workload import Snapshot
from sidecar.state import open_state
from sidecar.state.settings import StateSettings
from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_SERVER_NAME, all_audit_lines, audit_lines
from tests.support.a2a_cards import CardServer, card, write_jwks
from tests.support.policies import write_policy
from tests.support.running import APPROVER

BASE = "http://127.0.0.1:8095/peers/billing"
PEER_HOST = "peer.example"
PEER_ID = "spiffe://demo.example/agent/billing"
SELF_ID = "spiffe://demo.example/agent/support"
MALLORY = "spiffe://demo.example/agent/mallory"
AGENT = "spiffe://demo.example/agent/support"
ALLOW_A2A = """package agentsidecar.authz

import rego.v1

default decision := {"effect": "deny", "reasons": ["not granted"]}

decision := {"effect": "allow"} if {
    input.action.kind == "a2a"
    not input.action.card.changed
}
"""


@pytest.fixture
def state(tmp_path):
    db = open_state(StateSettings(dir=tmp_path / "state"))
    yield db
    db.close()


def _view(book: CardBook, peer: str = "billing") -> Any:
    async def go() -> Any:
        try:
            return await book.card_for(peer)
        finally:
            await book.aclose()

    return asyncio.run(go())


def _interface_urls(agent_card: dict[str, Any]) -> dict[str, list[str]]:
    """The interface URLs every reader an agent may use takes from ``agent_card``."""
    return {
        "resolver": [
            i.url for i in parse_agent_card(json.loads(json.dumps(agent_card))).supported_interfaces
        ],
        "parse_lenient": [
            i.url for i in parse_lenient(dict(agent_card), AgentCard()).supported_interfaces
        ],
        "ParseDict": [
            i.url
            for i in ParseDict(
                json.loads(json.dumps(agent_card)), AgentCard(), ignore_unknown_fields=True
            ).supported_interfaces
        ],
    }


def _only_the_sidecar(agent_card: dict[str, Any], base: str = BASE) -> None:
    assert PEER_HOST not in json.dumps(agent_card), agent_card
    assert _interface_urls(agent_card) == {
        "resolver": [base],
        "parse_lenient": [base],
        "ParseDict": [base],
    }


def _hostile_interfaces(served: dict[str, Any]) -> dict[str, Any]:
    """Every way a card can name an interface besides the 1.0 JSON name."""
    return served | {
        "supported_interfaces": [
            {"url": f"https://{PEER_HOST}/snake", "protocol_binding": "JSONRPC"}
        ],
        "additionalInterfaces": [{"url": f"https://{PEER_HOST}/rest", "transport": "JSONRPC"}],
        "additional_interfaces": [{"url": f"https://{PEER_HOST}/rest2", "transport": "JSONRPC"}],
        "preferredTransport": "JSONRPC",
        "preferred_transport": "JSONRPC",
        "x-direct": f"https://{PEER_HOST}/x",
    }


# --- 1: the agent's card is built from an allow-list --------------------------------------


def test_review_a2_1_a_1_0_card_with_aliases_and_additional_interfaces_reaches_the_agent_clean(
    state,
):
    served = _hostile_interfaces(card("refund", url=f"https://{PEER_HOST}/a2a"))
    with CardServer(served) as server:
        view = _view(CardBook({"billing": A2aPeerSettings(url=server.url)}, CardPinStore(state)))
    assert "supported_interfaces" not in view.card and "additionalInterfaces" not in view.card
    agent_card = view.for_agent(BASE)
    _only_the_sidecar(agent_card)
    assert agent_card["supportedInterfaces"] == [
        {"url": BASE, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ]
    assert [s["id"] for s in agent_card["skills"]] == ["refund"]
    _only_the_sidecar(rewrite_for_agent(served, BASE))  # as the extended card is rewritten


def test_review_a2_1_a_0_3_card_is_converted_to_1_0_and_keeps_no_peer_interface(state):
    served = {k: v for k, v in card("refund").items() if k != "supportedInterfaces"}
    served = _hostile_interfaces(served) | {
        "url": f"https://{PEER_HOST}/a2a",
        "protocolVersion": "0.3.0",
        "supportsAuthenticatedExtendedCard": True,
        "security": [{"key": ["read"]}],
        "securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": "X-Key"}},
    }
    with CardServer(served) as server:
        view = _view(CardBook({"billing": A2aPeerSettings(url=server.url)}, CardPinStore(state)))
    agent_card = view.for_agent(BASE)
    _only_the_sidecar(agent_card)
    assert agent_card["url"] == BASE and agent_card["preferredTransport"] == "JSONRPC"
    assert agent_card["additionalInterfaces"] == [{"url": BASE, "transport": "JSONRPC"}]
    assert agent_card["supportedInterfaces"][0]["protocolVersion"] == "0.3.0"
    parsed = parse_agent_card(json.loads(json.dumps(agent_card)))
    assert parsed.capabilities.extended_agent_card  # 0.3 names in 1.0 terms
    assert parsed.security_schemes["key"].api_key_security_scheme.name == "X-Key"
    assert list(parsed.security_requirements[0].schemes["key"].list) == ["read"]


@pytest.mark.parametrize(
    "hostile",
    [
        {"securitySchemes": {"k": {"type": ["apiKey"]}}},  # an unhashable type
        {"securitySchemes": {"k": "not an object"}},
        {"security": "everyone"},
        {"protocolVersion": "9" * 100},  # not written as it is
        {"protocolVersion": {"v": 1}},
    ],
    ids=["list-type", "string-scheme", "string-security", "long-version", "object-version"],
)
def test_review_a2_1_hostile_0_3_fields_never_raise_nor_reach_the_agent_as_interfaces(hostile):
    v03 = {k: v for k, v in card("refund").items() if k != "supportedInterfaces"}
    out = rewrite_for_agent(v03 | {"url": f"https://{PEER_HOST}/a2a"} | hostile, BASE)
    assert PEER_HOST not in json.dumps(out)
    assert out["supportedInterfaces"][0]["url"] == BASE
    assert out["supportedInterfaces"][0]["protocolVersion"] in ("0.3.0",)


@pytest.fixture
def extended_peers(tmp_path):
    """Two peers answering GetExtendedAgentCard with whatever a test sets: ``billing``
    (no keys) and ``signed`` (its cards must be signed with ``key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = write_jwks(tmp_path / "jwks.json", ("k1", key.public_key()))
    with (
        CardServer() as billing,
        CardServer(sign_card(card("refund", "lookup"), key, kid="k1")) as signed,
    ):
        yield billing, signed, key, jwks


def _extended(running, token: str, peer: str) -> dict[str, Any]:
    url = f"{running.sidecar.a2a_outbound.base_url}/peers/{peer}"
    body = {"jsonrpc": "2.0", "id": 4, "method": "GetExtendedAgentCard", "params": {}}
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_review_a2_1_the_extended_card_is_checked_verified_and_projected(
    start_jwt_sidecar, authority, extended_peers, tmp_path
):
    billing, signed, key, jwks = extended_peers
    running = start_jwt_sidecar(
        policy={"dir": str(write_policy(tmp_path / "policy", ALLOW_A2A))},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": {"url": billing.url, "timeout_s": 5},
            "signed": {"url": signed.url, "card_keys": str(jwks), "timeout_s": 5},
        },
    )
    token = authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE])
    base = f"{running.sidecar.a2a_outbound.base_url}/peers/billing"
    billing.extended = _hostile_interfaces(card("refund", "audit", url=f"https://{PEER_HOST}/a"))
    answer = _extended(running, token, "billing")["result"]
    _only_the_sidecar(answer, base)
    assert [s["id"] for s in answer["skills"]] == ["refund", "audit"]
    assert "x-direct" not in answer
    billing.extended = {"name": "no skills"}  # the shape the public card must have
    refused = _extended(running, token, "billing")
    # The call's outcome is the stable code (as on its audit record); the card's reason is named.
    assert refused["error"]["data"]["code"] == "peer_bad_response" and "result" not in refused
    assert "card_malformed" in refused["error"]["message"]
    assert refused["error"]["code"] == -32013  # UNAVAILABLE: the peer answered nonsense

    base = f"{running.sidecar.a2a_outbound.base_url}/peers/signed"
    good = sign_card(card("refund", "audit", url=f"https://{PEER_HOST}/a"), key, kid="k1")
    signed.extended = _hostile_interfaces(good)  # added after signing: not signed, dropped
    answer = _extended(running, token, "signed")["result"]
    _only_the_sidecar(answer, base)
    assert "signatures" not in answer and [s["id"] for s in answer["skills"]] == ["refund", "audit"]
    signed.extended = card("refund", "audit", "wire_money")  # unsigned, and keys are configured
    unsigned = _extended(running, token, "signed")["error"]
    assert unsigned["data"]["code"] == "peer_card_unverified", unsigned
    assert "card_unsigned" in unsigned["message"]
    forged = json.loads(json.dumps(good))
    forged["skills"].append({"id": "wire_money"})  # the signature no longer covers it
    signed.extended = forged
    refused = _extended(running, token, "signed")
    assert refused["error"]["data"]["code"] == "peer_card_unverified"
    assert "card_signature_invalid" in refused["error"]["message"]
    assert refused["error"]["code"] == -32010  # DENIED: an unverified card
    assert "wire_money" not in json.dumps(refused)


# --- 2: only the signed form is kept, pinned and served --------------------------------------


def test_review_a2_2_unsigned_empties_are_neither_pinned_nor_served(state, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = write_jwks(tmp_path / "jwks.json", ("k1", key.public_key()))
    signed = sign_card(card("refund"), key, kid="k1")
    tampered = json.loads(json.dumps(signed))  # added after signing, by someone without a key
    tampered["securityRequirements"] = [{}]  # an empty "no auth" alternative
    tampered["securitySchemes"] = {"apikey": {}}
    tampered["skills"][0]["examples"] = [""]
    tampered["supportedInterfaces"].append({"url": "", "protocolBinding": "", "tenant": ""})
    assert card_digest(tampered) == card_digest(signed)  # a signature cannot tell them apart
    with CardServer(tampered) as server:
        peers = {"billing": A2aPeerSettings(url=server.url, card_keys=jwks)}
        view = _view(CardBook(peers, CardPinStore(state)))
    assert view.signed and view.signer == "k1"
    expected = signed_content(signed)
    pin = CardPinStore(state).get("billing")
    assert pin is not None and pin.card == expected and pin.digest == card_digest(expected)
    assert view.card == expected and view.current == expected and view.digest == pin.digest
    served = json.dumps(view.for_agent(BASE))
    assert "securityRequirements" not in served and "securitySchemes" not in served
    assert "examples" not in served and '"tenant"' not in served


# --- 3: the accept pins exactly the card reviewed and audited --------------------------------


class _RefreshingAudit:
    """The real audit log, whose write lets the peer switch cards and a refresh run before
    the accept goes on (what another operator's ``a2a list`` or an agent call past the TTL
    does): the interleaving the review found."""

    def __init__(self, log: AuditLog, server: CardServer, book: CardBook) -> None:
        self.log = log
        self.server = server
        self.book = book
        self.loop: asyncio.AbstractEventLoop | None = None

    def write(self, record: dict[str, Any]) -> None:  # runs on the state thread (off_loop)
        self.log.write(record)
        before = self.book._fetched["billing"].digest
        self.server.serve(card("refund", "wire", "drain"))
        assert self.loop is not None
        # Not waited on whole: its pin step needs the state thread this write holds.
        asyncio.run_coroutine_threadsafe(self.book.refresh("billing"), self.loop)
        waited = threading.Event()
        for _ in range(6000):  # bounded poll: until the refresh has read the next card
            if self.book._fetched["billing"].digest != before:
                return
            waited.wait(0.01)
        raise AssertionError("the refresh did not read the next card")


def test_review_a2_3_a_refresh_between_the_audit_and_the_pin_cannot_break_the_accept(
    state, tmp_path
):
    audit_path = tmp_path / "audit.log"
    log = AuditLog(audit_path)
    with CardServer() as server:
        book = CardBook({"billing": A2aPeerSettings(url=server.url)}, CardPinStore(state))
        audit = _RefreshingAudit(log, server, book)

        async def scenario() -> tuple[Any, str, str]:
            audit.loop = asyncio.get_running_loop()
            first = await book.card_for("billing")
            server.serve(card("refund", "wire"))
            reviewed = (await book.refresh("billing")).digest  # what the operator reviews
            grpc_server = grpc.aio.server()
            register(book, audit)(grpc_server, lambda _ctx: "local:alice")
            port = grpc_server.add_insecure_port("127.0.0.1:0")
            await grpc_server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = a2a_pb2_grpc.A2aCardsStub(channel)
                    request = a2a_pb2.AcceptCardRequest(
                        peer="billing", digest=reviewed, reason="ok"
                    )
                    accepted = await stub.Accept(request)
            finally:
                await grpc_server.stop(None)
                await book.aclose()
            return accepted, reviewed, first.pinned_digest

        accepted, reviewed, first = asyncio.run(scenario())
    log.close()
    assert accepted.pinned_digest == reviewed != first
    assert accepted.changed  # the peer serves a third card now, not accepted
    pin = CardPinStore(state).get("billing")
    assert pin is not None and pin.digest == reviewed and pin.pinned_by == "local:alice"
    assert [s["id"] for s in pin.card["skills"]] == ["refund", "wire"]  # the card reviewed
    assert card_digest(pin.card) == reviewed
    (record,) = audit_lines(audit_path, "a2a_card")
    assert record["card_digest"] == pin.digest and record["skills"] == ["refund", "wire"]


def test_review_a2_3_a_reviewed_card_that_is_not_the_digest_is_refused(state):
    with CardServer() as server:
        book = CardBook({"billing": A2aPeerSettings(url=server.url)}, CardPinStore(state))

        async def scenario() -> CardError:
            try:
                view = await book.card_for("billing")
                other = card("refund", "wire_money")
                with pytest.raises(CardError) as refused:
                    await book.accept("billing", view.digest, "local:eve", reviewed=other)
                return refused.value
            finally:
                await book.aclose()

        refused = asyncio.run(scenario())
    assert refused.code == "card_digest_mismatch"
    pin = CardPinStore(state).get("billing")
    assert pin is not None and pin.pinned_by == "first-seen"


# --- 4: a configured spiffe_id is required of the card server in every https mode ------------


def _tls_server(authority, spiffe_id: str, directory: Path) -> ssl.SSLContext:
    issued = authority.issue_x509(spiffe_id, dns_names=["localhost"])
    (directory / "chain.pem").write_bytes(issued.chain_pem)
    (directory / "key.pem").write_bytes(issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "chain.pem", directory / "key.pem")
    return context


@pytest.mark.parametrize("with_identity", [True, False], ids=["svid", "no-identity"])
def test_review_a2_4_a_spiffe_id_is_enforced_with_ca_file(
    state, authority, tmp_path, with_identity
):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.x509_bundle_pem)
    own = authority.issue_x509(SELF_ID)
    snapshot = Snapshot(SELF_ID, (own.leaf,), own.key, {"demo.example": (authority.ca_cert,)})
    kwargs: dict[str, Any] = {"snapshot": (lambda: snapshot)} if with_identity else {}
    for holder, accepted in ((MALLORY, False), (PEER_ID, True)):
        directory = tmp_path / holder.rsplit("/", 1)[-1]
        directory.mkdir(exist_ok=True)
        with CardServer(card("wire_money"), tls=_tls_server(authority, holder, directory)) as srv:
            url = srv.url.replace("127.0.0.1", "localhost")
            peer = A2aPeerSettings(url=url, spiffe_id=PEER_ID, ca_file=ca)
            book = CardBook({"billing": peer}, CardPinStore(state), **kwargs)
            if accepted:
                assert _view(book).skills == ("wire_money",)
                continue
            with pytest.raises(CardError) as refused:
                _view(book)
            assert refused.value.code == "card_server_mismatch"
            assert CardPinStore(state).get("billing") is None  # nothing pinned from mallory


def test_review_a2_4_a_spiffe_id_is_enforced_with_the_system_cas(
    state, authority, tmp_path, monkeypatch
):
    """No identity and no ca_file: the system's CAs (here the dev CA, by SSL_CERT_FILE)
    still do not make a server holding another workload's SVID the peer."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.x509_bundle_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with CardServer(card("wire_money"), tls=_tls_server(authority, MALLORY, tmp_path)) as srv:
        url = srv.url.replace("127.0.0.1", "localhost")
        book = CardBook(
            {"billing": A2aPeerSettings(url=url, spiffe_id=PEER_ID)}, CardPinStore(state)
        )
        with pytest.raises(CardError) as refused:
            _view(book)
    assert refused.value.code == "card_server_mismatch"


# --- 5: redirects, an accept that cannot be audited, a non-approver ---------------------------


def test_review_a2_5_a_redirect_to_a_valid_card_is_not_followed(state):
    with CardServer() as server:
        server.status, server.location = 302, f"{server.url}/elsewhere"
        book = CardBook({"billing": A2aPeerSettings(url=server.url)}, CardPinStore(state))
        with pytest.raises(CardError) as refused:
            _view(book)
        assert server.requests == 1  # /elsewhere (a card that would pass) was never fetched
    assert refused.value.code == "card_http_status"
    assert CardPinStore(state).get("billing") is None


def test_review_a2_5_an_accept_that_cannot_be_audited_does_not_happen(start_sidecar, tools):
    with CardServer() as peer:
        running = start_sidecar(
            tools.url,
            audit={"path": "/dev/full", "mode": "strict"},
            a2a_peers={"billing": {"url": peer.url}},
        )
        with running.approvals("carol") as admin:
            (first,) = admin.a2a_cards()
            peer.serve(card("refund", "lookup", "wire_money"))
            (changed,) = admin.a2a_cards()
            assert changed.changed
            with pytest.raises(AdminCallError) as refused:
                admin.a2a_accept("billing", digest=changed.digest, reason="reviewed")
            assert refused.value.status == grpc.StatusCode.UNAVAILABLE
            assert "audit_unavailable" in str(refused.value)
            (after,) = admin.a2a_cards()
    assert after.pinned_digest == first.pinned_digest and after.changed
    assert after.pinned_by == "first-seen" and list(after.skills) == ["refund", "lookup"]


def test_review_a2_5_a_non_approver_cannot_list_or_accept(start_jwt_sidecar, authority):
    with CardServer() as peer:
        running = start_jwt_sidecar(
            approvals={"listen": "127.0.0.1:0", "approvers": [APPROVER]},
            a2a_peers={"billing": {"url": peer.url}},
        )

        def admin(spiffe_id: str) -> ApprovalsClient:
            svid = authority.issue_x509(spiffe_id)
            creds = grpc.ssl_channel_credentials(
                authority.x509_bundle_pem, svid.key_pem, svid.chain_pem
            )
            return ApprovalsClient(
                running.approvals_address, tls=creds, server_name=SIDECAR_SERVER_NAME
            )

        with admin(APPROVER) as alice:
            (first,) = alice.a2a_cards()
        peer.serve(card("refund", "lookup", "wire_money"))
        wanted = card_digest(card("refund", "lookup", "wire_money"))
        with admin(MALLORY) as mallory:
            for call in (
                lambda: mallory.a2a_cards(),
                lambda: mallory.a2a_accept("billing", digest=wanted, reason="mine"),
            ):
                with pytest.raises(AdminCallError) as refused:
                    call()
                assert refused.value.status == grpc.StatusCode.PERMISSION_DENIED
                assert "not_an_approver" in str(refused.value)
        with admin(APPROVER) as alice:
            (after,) = alice.a2a_cards()
    assert after.pinned_digest == first.pinned_digest and after.pinned_by == "first-seen"
    assert [r for r in all_audit_lines(running.audit_path) if r["type"] == "a2a_card"] == []
