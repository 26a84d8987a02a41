"""Review of issue 34, A4 finding "the relay does not check the peer's SPIFFE ID": over https,
a peer with ``spiffe_id`` is verified against the SPIFFE bundle and must present exactly that
ID, whatever its credential kind, before any request byte is sent. A real a2a-sdk peer under
uvicorn with development-CA SVIDs (``localhost`` as DNS name), the sidecar in identity mode jwt,
the agent's requests over real HTTP on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.a2a.peer_tls import spiffe_id_of
from sidecar.identity.dev_authority import DevAuthority
from tests.conftest import SIDECAR_AUDIENCE
from tests.integration.test_a2a_outbound import AGENT, PEER_AUDIENCE, POLICY, Outbound, _send
from tests.support.a2a_peer import PeerAgent
from tests.support.policies import write_policy

PEER_ID = "spiffe://demo.example/agent/billing"
MALLORY_ID = "spiffe://demo.example/agent/mallory"  # same trust domain, same DNS name

CREDENTIALS: dict[str, dict[str, Any]] = {
    "mtls": {"kind": "mtls"},
    "jwt_svid": {"kind": "jwt_svid", "audience": PEER_AUDIENCE},
    "none": {"kind": "none"},
}


def _svid_files(authority: Any, spiffe_id: str, directory: Path) -> tuple[str, str]:
    issued = authority.issue_x509(spiffe_id, dns_names=("localhost",))
    directory.mkdir(parents=True, exist_ok=True)
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    return str(chain), str(key)


class Peers:
    """The TLS peer now serving at one port, replaceable by another on the same port."""

    def __init__(self, authority: Any, tmp_path: Path) -> None:
        self._authority = authority
        self._tmp = tmp_path
        self.agent = PeerAgent(tls=_svid_files(authority, PEER_ID, tmp_path / "right"))
        self.port = self.agent.port
        self.url = self.agent.url

    def replace(self, spiffe_id: str, authority: Any = None) -> PeerAgent:
        """Stop the peer (its connections close) and serve another SVID at the same port
        (issued by ``authority``, the trusted one by default)."""
        self.agent.stop()
        issuer = authority or self._authority
        where = self._tmp / f"{spiffe_id.rsplit('/', 1)[1]}-{id(issuer)}"
        files = _svid_files(issuer, spiffe_id, where)
        self.agent = PeerAgent(port=self.port, tls=files)
        assert self.agent.url == self.url
        return self.agent

    def stop(self) -> None:
        self.agent.stop()


@pytest.fixture
def peers(authority, tmp_path) -> Iterator[Peers]:
    running = Peers(authority, tmp_path / "peer")
    yield running
    running.stop()


def _sidecar(start_jwt_sidecar, authority, tmp_path, url: str, credential: str) -> Outbound:
    policy = write_policy(tmp_path / "policy", POLICY)
    running = start_jwt_sidecar(
        policy={"dir": str(policy)},
        a2a={"listen": "127.0.0.1:0"},
        a2a_peers={
            "billing": {
                "url": url,
                "spiffe_id": PEER_ID,
                "credential": CREDENTIALS[credential],
                "timeout_s": 10,
            }
        },
    )
    return Outbound(running, authority.issue_jwt(AGENT, [SIDECAR_AUDIENCE]))


def _text(answer: Any) -> str:
    return answer.json()["result"]["message"]["parts"][0]["text"]


@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_review_a4_peer_tls_a_the_right_spiffe_id_is_relayed(
    start_jwt_sidecar, authority, tmp_path, peers, credential
):
    """(a) and (c): every credential kind reaches an https SPIFFE peer through the trust
    bundle (jwt_svid and none used the system's CAs before: a certificate error)."""
    outbound = _sidecar(start_jwt_sidecar, authority, tmp_path, peers.url, credential)
    answer = outbound.post(_send("echo hello"))
    assert _text(answer) == "peer heard: echo hello", answer.text
    [seen] = peers.agent.seen
    assert ("authorization" in seen.headers) == (credential == "jwt_svid")
    [record] = outbound.records()
    assert record["outcome"]["code"] == "ok"


@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_review_a4_peer_tls_b_another_svid_of_the_domain_is_refused_before_any_byte(
    start_jwt_sidecar, authority, tmp_path, peers, credential
):
    """(b): the card was fetched from the right peer; then another workload of the same trust
    domain, with the same DNS name, serves the peer's URL. The relay refuses it after the
    handshake: nothing reaches that server's agent, one audit record with the code."""
    outbound = _sidecar(start_jwt_sidecar, authority, tmp_path, peers.url, credential)
    assert _text(outbound.post(_send("echo first"))) == "peer heard: echo first"
    mallory = peers.replace(MALLORY_ID)
    answer = outbound.post(_send("echo leak this"))
    error = answer.json()["error"]
    assert error["data"]["code"] == "peer_identity_mismatch", answer.text
    assert error["code"] == -32013
    assert MALLORY_ID in error["message"] or "peer" in error["message"]
    assert mallory.seen == []
    first, refused = outbound.records()
    assert first["outcome"]["code"] == "ok"
    assert refused["outcome"]["code"] == "peer_identity_mismatch"
    assert [r["outcome"]["code"] for r in outbound.records()].count("peer_identity_mismatch") == 1
    # The right peer back: the relay connects to it again.
    peers.replace(PEER_ID)
    assert _text(outbound.post(_send("echo again"))) == "peer heard: echo again"


def test_review_a4_peer_tls_hostile_a_foreign_ca_with_the_right_id_is_unavailable(
    start_jwt_sidecar, authority, tmp_path, peers
):
    """The right SPIFFE ID and DNS name, issued by a CA outside the trust bundle: the
    handshake fails (``peer_unavailable``), nothing is received, one record."""
    outbound = _sidecar(start_jwt_sidecar, authority, tmp_path, peers.url, "jwt_svid")
    assert _text(outbound.post(_send("echo first"))) == "peer heard: echo first"
    forger = peers.replace(PEER_ID, DevAuthority("demo.example"))
    answer = outbound.post(_send("echo leak this"))
    assert answer.json()["error"]["data"]["code"] == "peer_unavailable", answer.text
    assert forger.seen == []
    assert [r["outcome"]["code"] for r in outbound.records()] == ["ok", "peer_unavailable"]
    assert "Bearer" not in outbound.running.audit_path.read_text()


def _cert(uris: list[str], *, key: Any = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostile")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans.append(x509.DNSName("localhost"))
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ([PEER_ID], PEER_ID),
        ([], ""),  # a DNS name only: no SPIFFE ID
        ([PEER_ID, MALLORY_ID], ""),  # two URI SANs: not an SVID, never "the first one"
        ([MALLORY_ID, PEER_ID], ""),
        ([PEER_ID + "/"], PEER_ID + "/"),  # compared exactly, never by prefix
    ],
)
def test_review_a4_peer_tls_the_leaf_names_one_spiffe_id_or_none(uris, expected):
    assert spiffe_id_of(_cert(uris)) == expected
    assert (spiffe_id_of(_cert(uris)) == PEER_ID) == (uris == [PEER_ID])


def test_review_a4_peer_tls_no_certificate_names_no_one():
    assert spiffe_id_of(None) == "" and spiffe_id_of(b"") == ""
