"""mTLS mode: the agent presents its X.509-SVID in the TLS handshake; the subject is the peer's
SPIFFE ID. Clients without a certificate, with one from another CA, or with an expired one are
refused in the handshake (before any call exists, so there is nothing to audit)."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from sidecar.client import SidecarClient, Unavailable
from sidecar.identity.dev_authority import DevAuthority, IssuedX509Svid
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from tests.conftest import audit_lines
from tests.support.settle import poll

SIDECAR_ID = "spiffe://demo.example/ns/agents/sa/support-sidecar"
AGENT = "spiffe://demo.example/agent/support"
SERVER_NAME = "agent-sidecar"


@pytest.fixture
def mtls_sidecar(start_sidecar, tools, authority, tmp_path):
    api = DevWorkloadApi(authority, SIDECAR_ID, dns_names=(SERVER_NAME,))
    server = DevWorkloadApiServer(api, tmp_path / "wl.sock").start()
    running = start_sidecar(
        tools.url,
        identity={"mode": "mtls", "socket": f"unix://{server.socket_path}"},
        server={"listen": ["127.0.0.1:0"]},
    )
    running.workload_api = api
    yield running
    server.stop()


def _client(running, authority: DevAuthority, svid: IssuedX509Svid | None) -> SidecarClient:
    creds = grpc.ssl_channel_credentials(
        root_certificates=authority.x509_bundle_pem,
        private_key=svid.key_pem if svid else None,
        certificate_chain=svid.chain_pem if svid else None,
    )
    return SidecarClient(running.address, tls=creds, server_name=SERVER_NAME, timeout_s=5)


def test_the_peers_spiffe_id_is_the_subject(mtls_sidecar, authority):
    with _client(mtls_sidecar, authority, authority.issue_x509(AGENT)) as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200
    [record] = audit_lines(mtls_sidecar.audit_path)
    assert record["subject"]["spiffe_id"] == AGENT
    assert record["subject"]["attestation"] == "x509-svid"


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired"])
def test_bad_client_certificates_are_refused(mtls_sidecar, authority, tools, case):
    if case == "no certificate":
        svid = None
    elif case == "another CA":
        svid = DevAuthority("demo.example").issue_x509(AGENT)  # same name, different CA
    else:
        svid = authority.issue_x509(
            AGENT, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), ttl_s=60
        )
    with _client(mtls_sidecar, authority, svid) as client, pytest.raises(Unavailable):
        client.call_tool("tickets.get", {"id": "1"})
    assert tools.received == []


def test_the_server_certificate_follows_rotation(mtls_sidecar, authority):
    before = mtls_sidecar.workload_api.svid.leaf.serial_number
    mtls_sidecar.workload_api.rotate()
    identity = mtls_sidecar.sidecar.identity
    poll(lambda: identity.rotations >= 1, what="the rotation applied")
    with _client(mtls_sidecar, authority, authority.issue_x509(AGENT)) as client:
        assert client.check("tickets.get", {"id": "1"}).effect == "allow"
    assert identity.snapshot().chain[0].serial_number != before


def test_plaintext_clients_cannot_talk_to_the_mtls_listener(mtls_sidecar):
    with SidecarClient(mtls_sidecar.address, timeout_s=3) as client, pytest.raises(Unavailable):
        client.check("tickets.get", {"id": "1"})
