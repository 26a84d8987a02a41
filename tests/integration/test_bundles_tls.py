"""Issue 27, deliverable 1: the bundle server over TLS, authenticated by a client certificate
(OPA's ``credentials.client_tls``) or by the sidecar's own X.509-SVID from the Workload API
(``credentials.svid``); a server the configured CA did not sign is refused."""

from __future__ import annotations

import ssl

from sidecar.components import start_bundles
from sidecar.identity import WorkloadIdentity
from sidecar.identity.dev_authority import DevAuthority
from sidecar.policy.bundle.build import build_bundle
from tests.support.bundle_server import BundleServer
from tests.support.bundles import bundle_config, marked_policy, parse_bundle_settings, runtime

PATH = "/bundles/authz.tar.gz"


def _server_context(authority: DevAuthority, tmp_path) -> ssl.SSLContext:
    svid = authority.issue_x509("spiffe://demo.example/bundle-server", dns_names=("localhost",))
    (tmp_path / "server.pem").write_bytes(svid.chain_pem + svid.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=authority.x509_bundle_pem.decode())
    return context


def _write_ca(authority: DevAuthority, tmp_path):
    path = tmp_path / "ca.pem"
    path.write_bytes(authority.x509_bundle_pem)
    return path


def _uri_san(cert: dict) -> str:
    return next(value for kind, value in cert["subjectAltName"] if kind == "URI")


def test_item1_client_tls_certificate(authority, tmp_path):
    client = authority.issue_x509("spiffe://demo.example/ns/agents/sa/bundle-client")
    (tmp_path / "client.crt").write_bytes(client.chain_pem)
    (tmp_path / "client.key").write_bytes(client.key_pem)
    with BundleServer(tls=_server_context(authority, tmp_path)) as server:
        credentials = {
            "client_tls": {
                "cert": str(tmp_path / "client.crt"),
                "private_key": str(tmp_path / "client.key"),
            }
        }
        raw = bundle_config(
            server.url,
            tmp_path,
            service={
                "credentials": credentials,
                "tls": {"ca_cert": str(_write_ca(authority, tmp_path))},
            },
        )
        rt = runtime(parse_bundle_settings(raw, tmp_path))
        rt.start().stop(wait=True)
        server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A"), revision="rev-A"))
        assert rt.poller.poll_once() is True
        assert rt.engine.revision == "rev-A"
        assert _uri_san(server.client_certs[-1]) == client.spiffe_id


def test_item1_server_signed_by_another_ca_refused(authority, tmp_path):
    with BundleServer(tls=_server_context(DevAuthority("demo.example"), tmp_path)) as server:
        server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A")))
        raw = bundle_config(
            server.url, tmp_path, service={"tls": {"ca_cert": str(_write_ca(authority, tmp_path))}}
        )
        rt = runtime(parse_bundle_settings(raw, tmp_path))
        rt.start().stop(wait=True)
        assert rt.poller.poll_once() is False
        error = rt.tracker.status("authz").errors[-1]
        assert error.code == "bundle_download_failed"
        assert "CERTIFICATE_VERIFY_FAILED" in error.message
        assert not rt.engine.healthy()


def test_item1_the_sidecars_svid_as_client_certificate(authority, workload_api, tmp_path):
    identity = WorkloadIdentity(f"unix://{workload_api.socket_path}")
    try:
        assert identity.wait_ready(30)
        with BundleServer(tls=_server_context(authority, tmp_path)) as server:
            raw = bundle_config(server.url, tmp_path, service={"credentials": {"svid": True}})
            rt = runtime(parse_bundle_settings(raw, tmp_path))
            start_bundles(rt.engine, identity)  # as the sidecar does: roots = trust bundle
            rt.stop(wait=True)
            server.publish(PATH, build_bundle(marked_policy(tmp_path / "p", "A"), revision="r"))
            assert rt.poller.poll_once() is True
            assert _uri_san(server.client_certs[-1]) == "spiffe://demo.example/agent/support"
    finally:
        identity.close()


def test_item1_svid_without_a_workload_api_is_a_reported_failure(tmp_path):
    raw = bundle_config("https://localhost:9", tmp_path, service={"credentials": {"svid": True}})
    rt = runtime(parse_bundle_settings(raw, tmp_path))
    start_bundles(rt.engine, None)
    rt.stop(wait=True)
    assert rt.poller.poll_once() is False
    error = rt.tracker.status("authz").errors[-1]
    assert error.code == "bundle_download_failed"
    assert "credentials.svid: no SVID: no Workload API connection" in error.message
