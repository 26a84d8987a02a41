"""JWT mode: the agent's JWT-SVID is verified per the JWT-SVID standard; every way a token can
be wrong is UNAUTHENTICATED with its own code, audited, and nothing is relayed."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.client import SidecarClient, Unauthenticated, workload_api_jwt_svid
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from tests.conftest import SIDECAR_AUDIENCE as AUDIENCE
from tests.conftest import audit_lines

AGENT = "spiffe://demo.example/agent/support"


@pytest.fixture
def sidecar_in_jwt_mode(start_jwt_sidecar):
    return start_jwt_sidecar()


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides) -> dict:
    now = int(time.time())
    claims = {"sub": AGENT, "aud": [AUDIENCE], "exp": now + 300, "iat": now}
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _signed(authority: DevAuthority, claims: dict, **headers) -> str:
    kid, key = authority.jwt_signing_key()
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT", **headers})


def _matrix(authority: DevAuthority) -> list[tuple[str, str, str]]:
    kid, key = authority.jwt_signing_key()
    unsigned = _b64({"alg": "none", "typ": "JWT", "kid": kid}) + "." + _b64(_claims()) + "."
    # No alg header at all, but a real ES256 signature over the header and payload.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = _b64({"typ": "JWT", "kid": kid}) + "." + _b64(_claims())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    no_alg = signing_input + "." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    other_td = DevAuthority("other.example").issue_jwt("spiffe://other.example/agent", [AUDIENCE])
    stranger = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return [
        ("alg none", unsigned, "jwt_bad_algorithm"),
        (
            "HS256",
            jwt.encode(
                _claims(),
                "shared-secret-shared-secret-32by",
                algorithm="HS256",
                headers={"kid": kid},
            ),
            "jwt_bad_algorithm",
        ),
        ("missing alg", no_alg, "jwt_bad_algorithm"),
        ("bad typ", _signed(authority, _claims(), typ="JWS+XYZ"), "jwt_bad_type"),
        ("missing aud", _signed(authority, _claims(aud=None)), "jwt_missing_claim"),
        ("missing exp", _signed(authority, _claims(exp=None)), "jwt_missing_claim"),
        ("missing sub", _signed(authority, _claims(sub=None)), "jwt_missing_claim"),
        ("sub not a SPIFFE ID", _signed(authority, _claims(sub="agent")), "jwt_bad_subject"),
        (
            "wrong audience",
            _signed(authority, _claims(aud=["spiffe://demo.example/x"])),
            "jwt_audience_mismatch",
        ),
        ("expired", _signed(authority, _claims(exp=int(time.time()) - 5)), "jwt_expired"),
        ("other trust domain", other_td, "untrusted_domain"),
        (
            "unknown kid",
            jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": "not-in-bundle"}),
            "jwt_unknown_kid",
        ),
        (
            "forged signature",
            jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": kid}),
            "jwt_bad_signature",
        ),
        (
            "RS256 with a foreign key",
            jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": kid}),
            "jwt_bad_signature",
        ),
        (
            "replayed to another audience",
            authority.issue_jwt(AGENT, ["spiffe://demo.example/tickets"]),
            "jwt_audience_mismatch",
        ),
        ("not a JWT", "not-a-token", "jwt_malformed"),
    ]


def test_a_valid_jwt_svid_is_the_subject(sidecar_in_jwt_mode, authority, tools):
    token = authority.issue_jwt(AGENT, [AUDIENCE])
    with SidecarClient(sidecar_in_jwt_mode.address, jwt_svid=lambda: token) as client:
        result = client.call_tool("tickets.get", {"id": "1"})
    assert result.status == 200
    [record] = audit_lines(sidecar_in_jwt_mode.audit_path)
    assert record["subject"]["spiffe_id"] == AGENT
    assert record["subject"]["attestation"] == "jwt-svid"
    # The agent's token is not forwarded upstream, and not written to the audit log.
    assert "authorization" not in tools.received[0].headers
    assert token not in sidecar_in_jwt_mode.audit_path.read_text()


def test_every_bad_token_is_unauthenticated_with_its_code(sidecar_in_jwt_mode, authority, tools):
    cases = _matrix(authority)
    for name, token, code in cases:
        with (
            SidecarClient(sidecar_in_jwt_mode.address, jwt_svid=lambda t=token: t) as client,
            pytest.raises(Unauthenticated) as failed,
        ):
            client.call_tool("tickets.get", {"id": "1"})
        assert failed.value.code == code, f"{name}: got {failed.value.code}"
    with SidecarClient(sidecar_in_jwt_mode.address) as client, pytest.raises(Unauthenticated) as no:
        client.call_tool("tickets.get", {"id": "1"})
    assert no.value.code == "missing_credentials"
    assert tools.received == []
    records = audit_lines(sidecar_in_jwt_mode.audit_path)
    assert [r["outcome"]["code"] for r in records] == [c for _, _, c in cases] + [
        "missing_credentials"
    ]
    assert all(r["outcome"]["status"] == "UNAUTHENTICATED" for r in records)


def test_the_agent_gets_its_token_from_its_own_workload_api(
    sidecar_in_jwt_mode, authority, tmp_path
):
    agent_api = DevWorkloadApiServer(
        DevWorkloadApi(authority, AGENT), tmp_path / "agent-workload.sock"
    )
    agent_api.start()
    try:
        token = workload_api_jwt_svid(str(agent_api.socket_path), AUDIENCE)
        with SidecarClient(sidecar_in_jwt_mode.address, jwt_svid=token) as client:
            assert client.check("tickets.get", {"id": "1"}).effect == "allow"
    finally:
        agent_api.stop()
    [record] = audit_lines(sidecar_in_jwt_mode.audit_path)
    assert record["subject"] == {
        "spiffe_id": AGENT,
        "attestation": "jwt-svid",
        "expires_at": record["subject"]["expires_at"],
    }
