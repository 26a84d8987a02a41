"""A2A agent card signatures (issue 34, deliverable 2; signing for 3), against the official
a2a-sdk both ways and with real keys: EC P-256, RSA (PKCS#1 and PSS), Ed25519, and an
X.509-SVID from the development SPIFFE authority. Every refusal has its stable code."""

from __future__ import annotations

import base64
import copy
import json
import math

import pytest
from a2a.types import AgentCard
from a2a.utils import _jcs as sdk_jcs
from a2a.utils.signing import (
    InvalidSignaturesError,
    create_agent_card_signer,
    create_signature_verifier,
)
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf.json_format import MessageToDict, ParseDict

from sidecar.a2a.card_signature import (
    card_payload,
    load_card_keys,
    sign_card,
    sign_card_with_svid,
    signed_view,
    verify_card,
)
from sidecar.a2a.errors import CardError, CardSignatureError
from sidecar.a2a.jcs import JcsError, canonicalize
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.workload import Snapshot
from tests.support.a2a_cards import card, jwk, write_jwks

PEER_ID = "spiffe://demo.example/agent/billing"

KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
    "PS256": lambda: rsa.generate_private_key(65537, 2048),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sdk_sign(served: dict, key, alg: str, kid: str = "k1") -> dict:
    signer = create_agent_card_signer(key, {"kid": kid, "alg": alg, "jku": None, "typ": "JOSE"})
    return MessageToDict(signer(ParseDict(served, AgentCard())))


def _code(exc_info) -> str:
    return exc_info.value.code


def _svid_snapshot(authority: DevAuthority, spiffe_id: str) -> Snapshot:
    issued = authority.issue_x509(spiffe_id)
    return Snapshot(spiffe_id, (issued.leaf,), issued.key, {"demo.example": (authority.ca_cert,)})


@pytest.mark.parametrize("alg", list(KEYS))
def test_a2a_cards_a_card_signed_by_the_sdk_verifies_with_ours(alg):
    key = KEYS[alg]()
    served = card("refund", "lookup", name="Billing ü 💶")
    signed = _sdk_sign(served, key, alg)
    verified = verify_card(signed, keys={"k1": key.public_key()})
    assert (verified.signer, verified.kid, verified.alg) == ("k1", "k1", alg)


@pytest.mark.parametrize("alg", list(KEYS))
def test_a2a_cards_a_card_signed_by_ours_verifies_with_the_sdk(alg):
    key = KEYS[alg]()
    signed = sign_card(card("refund", name="Billing ü 💶"), key, kid="k1", alg=alg)
    verifier = create_signature_verifier(lambda kid, jku: key.public_key(), [alg])
    verifier(ParseDict(signed, AgentCard()))  # raises when it does not verify
    tampered = copy.deepcopy(signed)
    tampered["skills"][0]["description"] = "sends money anywhere"
    with pytest.raises(InvalidSignaturesError):
        verifier(ParseDict(tampered, AgentCard()))


def test_a2a_cards_the_sdk_server_compat_fields_are_not_signed_and_not_kept():
    """An SDK server adds 0.3 fields (url, preferredTransport, ...) to the signed card it
    serves: the signature still verifies, and what the sidecar keeps is only what is signed."""
    from a2a.server.request_handlers.response_helpers import agent_card_to_dict

    key = KEYS["ES256"]()
    signer = create_agent_card_signer(key, {"kid": "k1", "alg": "ES256", "jku": None})
    both = card("refund")  # served for 1.0 and 0.3 clients alike
    both["supportedInterfaces"].append(
        {"url": "http://peer.invalid/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}
    )
    served = agent_card_to_dict(signer(ParseDict(both, AgentCard())))
    assert "url" in served and "preferredTransport" in served  # the SDK's additions
    assert verify_card(served, keys={"k1": key.public_key()}).alg == "ES256"
    kept = signed_view(served)
    assert "url" not in kept and "preferredTransport" not in kept and "signatures" not in kept
    assert kept["skills"][0]["id"] == "refund"


HOSTILE_VALUES = [
    {
        "\U0001f600": 1,
        "\uffff": 2,
        "a": 3,
        "é": [1e21, 1e-7, 0.1, -0.0, 5e-324, 1.7976931348623157e308],
    },
    {"text": 'tab\t nl\n nul\x00 del\x7f quote" back\\ \u2028 \U0001f4b6'},
    {"n": [123456789012345.0, 1e20, 1e22, 0.000001, 2.5, -1.5e-10, 333333333.33333329]},
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a2a_cards_jcs_matches_the_sdk_canonical_bytes(value):
    assert canonicalize(value) == sdk_jcs.canonicalize(value).encode()


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, 2**60, "\ud800", {"\ud800": 1}, {1: "x"}, object()],
    ids=["nan", "inf", "bigint", "surrogate", "surrogate-key", "int-key", "object"],
)
def test_a2a_cards_jcs_refuses_what_has_no_canonical_form(value):
    with pytest.raises(JcsError):
        canonicalize(value)


def test_a2a_cards_jcs_refuses_nesting_beyond_its_bound():
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(JcsError, match="deeper"):
        canonicalize(deep)
    with pytest.raises(CardError) as exc:
        card_payload({"name": "x", "capabilities": deep})
    assert _code(exc) == "card_malformed"


def test_a2a_cards_svid_signed_card_verifies_by_the_peers_spiffe_id_both_ways(authority):
    snapshot = _svid_snapshot(authority, PEER_ID)
    signed = sign_card_with_svid(card("refund"), snapshot)
    header = json.loads(base64.urlsafe_b64decode(signed["signatures"][0]["protected"] + "=="))
    assert header["alg"] == "ES256" and header["kid"] == PEER_ID and len(header["x5c"]) == 1
    bundles = {"demo.example": (authority.ca_cert,)}
    verified = verify_card(signed, keys={}, spiffe_id=PEER_ID, bundles=bundles)
    assert verified.signer == PEER_ID
    # The SDK verifies it too, with the leaf's key its key provider returns.
    verifier = create_signature_verifier(lambda kid, jku: snapshot.chain[0].public_key(), ["ES256"])
    verifier(ParseDict(signed, AgentCard()))


def test_a2a_cards_svid_of_another_identity_or_another_ca_is_refused(authority):
    bundles = {"demo.example": (authority.ca_cert,)}
    other = sign_card_with_svid(
        card("refund"), _svid_snapshot(authority, "spiffe://demo.example/agent/mallory")
    )
    with pytest.raises(CardSignatureError) as exc:
        verify_card(other, keys={}, spiffe_id=PEER_ID, bundles=bundles)
    assert _code(exc) == "card_signer_mismatch"
    forged = sign_card_with_svid(
        card("refund"), _svid_snapshot(DevAuthority("demo.example"), PEER_ID)
    )
    with pytest.raises(CardSignatureError) as exc:
        verify_card(forged, keys={}, spiffe_id=PEER_ID, bundles=bundles)
    assert _code(exc) == "card_signer_mismatch"
    with pytest.raises(CardSignatureError) as exc:  # no spiffe_id configured: no trust anchor
        verify_card(forged, keys={}, spiffe_id="", bundles=bundles)
    assert _code(exc) == "card_key_unknown"


def _with_header(signed: dict, header: dict, signature: str | None = None) -> dict:
    out = copy.deepcopy(signed)
    out["signatures"][0]["protected"] = _b64(json.dumps(header).encode())
    if signature is not None:
        out["signatures"][0]["signature"] = signature
    return out


def test_a2a_cards_hostile_signatures_are_refused_with_stable_codes():
    key = KEYS["ES256"]()
    keys = {"k1": key.public_key()}
    signed = sign_card(card("refund"), key, kid="k1")
    cases: dict[str, tuple[dict, str]] = {}
    cases["alg none"] = (_with_header(signed, {"alg": "none", "kid": "k1"}, ""), "card_alg_refused")
    cases["alg missing"] = (_with_header(signed, {"kid": "k1"}), "card_alg_refused")
    # Algorithm confusion: an HMAC keyed with the public key's bytes.
    public_pem = json.dumps(jwk("k1", key.public_key())).encode()
    header = {"alg": "HS256", "kid": "k1"}
    protected = _b64(json.dumps(header).encode())
    mac = hmac.HMAC(public_pem, hashes.SHA256())
    mac.update(f"{protected}.{_b64(card_payload(signed))}".encode())
    cases["alg HS256"] = (_with_header(signed, header, _b64(mac.finalize())), "card_alg_refused")
    cases["unknown kid"] = (_with_header(signed, {"alg": "ES256", "kid": "k9"}), "card_key_unknown")
    cases["crit"] = (
        _with_header(signed, {"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
        "card_signature_malformed",
    )
    tampered = copy.deepcopy(signed)
    tampered["skills"].append({"id": "wire_money", "name": "Wire"})
    cases["tampered"] = (tampered, "card_signature_invalid")
    wrong = sign_card(card("refund"), KEYS["ES256"](), kid="k1")
    cases["wrong key"] = (wrong, "card_signature_invalid")
    short = copy.deepcopy(signed)
    short["signatures"][0]["signature"] = signed["signatures"][0]["signature"][:40]
    cases["short signature"] = (short, "card_signature_invalid")
    extra = copy.deepcopy(signed)
    extra["signatures"][0]["payload"] = "x"
    cases["extra field"] = (extra, "card_signature_malformed")
    missing = copy.deepcopy(signed)
    del missing["signatures"][0]["signature"]
    cases["missing signature"] = (missing, "card_signature_malformed")
    not_b64 = copy.deepcopy(signed)
    not_b64["signatures"][0]["protected"] = "e30=!"
    cases["protected not base64url"] = (not_b64, "card_signature_malformed")
    dup = copy.deepcopy(signed)
    dup["signatures"][0]["protected"] = _b64(b'{"alg":"ES256","alg":"none","kid":"k1"}')
    cases["duplicate header key"] = (dup, "card_signature_malformed")
    array = copy.deepcopy(signed)
    array["signatures"][0]["protected"] = _b64(b"[1]")
    cases["header not an object"] = (array, "card_signature_malformed")
    overlap = copy.deepcopy(signed)
    overlap["signatures"][0]["header"] = {"kid": "k9"}
    cases["kid in both headers"] = (overlap, "card_signature_malformed")
    cases["unsigned"] = ({k: v for k, v in signed.items() if k != "signatures"}, "card_unsigned")
    many = copy.deepcopy(signed)
    many["signatures"] = many["signatures"] * 9
    cases["too many signatures"] = (many, "card_signature_malformed")
    not_list = copy.deepcopy(signed)
    not_list["signatures"] = {"protected": "x"}
    cases["signatures not a list"] = (not_list, "card_signature_malformed")
    for name, (doc, code) in cases.items():
        with pytest.raises(CardSignatureError) as exc:
            verify_card(doc, keys=keys)
        assert _code(exc) == code, name
    assert verify_card(signed, keys=keys).kid == "k1"


def test_a2a_cards_a_key_of_the_wrong_type_or_size_never_verifies():
    rsa_small = rsa.generate_private_key(65537, 1024)
    signed = sign_card(card("refund"), rsa_small, kid="k1")
    with pytest.raises(CardSignatureError) as exc:
        verify_card(signed, keys={"k1": rsa_small.public_key()})
    assert _code(exc) == "card_signature_invalid"
    ec_key = KEYS["ES256"]()
    es = sign_card(card("refund"), ec_key, kid="k1")
    as_rs = _with_header(es, {"alg": "RS256", "kid": "k1"})
    with pytest.raises(CardSignatureError) as exc:
        verify_card(as_rs, keys={"k1": ec_key.public_key()})
    assert _code(exc) == "card_signature_invalid"


def test_a2a_cards_one_good_signature_among_bad_ones_verifies():
    key = KEYS["EdDSA"]()
    good = sign_card(card("refund"), key, kid="k2")
    bad = _with_header(good, {"alg": "none", "kid": "k2"}, "")
    both = copy.deepcopy(good)
    both["signatures"] = bad["signatures"] + good["signatures"]
    assert verify_card(both, keys={"k2": key.public_key()}).alg == "EdDSA"


def test_a2a_cards_card_keys_files_are_checked(tmp_path):
    key = KEYS["ES256"]()
    path = write_jwks(
        tmp_path / "keys.json", ("k1", key.public_key()), ("k2", KEYS["RS256"]().public_key())
    )
    assert set(load_card_keys(path)) == {"k1", "k2"}
    bad = {
        "private": {"keys": [jwk("k1", key.public_key()) | {"d": "AAAA"}]},
        "symmetric": {"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]},
        "no kid": {"keys": [{k: v for k, v in jwk("k1", key.public_key()).items() if k != "kid"}]},
        "repeated kid": {"keys": [jwk("k1", key.public_key()), jwk("k1", key.public_key())]},
        "empty": {"keys": []},
        "not jwks": [1, 2],
    }
    for name, document in bad.items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(document))
        with pytest.raises(CardError) as exc:
            load_card_keys(path)
        assert _code(exc) == "card_keys_invalid", name
        assert "c2VjcmV0" not in str(exc.value) and "AAAA" not in str(exc.value)
    with pytest.raises(CardError):
        load_card_keys(tmp_path / "missing.json")
