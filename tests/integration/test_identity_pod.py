"""Pod mode and just-in-time upstream credentials, against a real Workload API server on a unix
socket (the development server, speaking workload.proto, SVIDs signed by a real test CA)."""

from __future__ import annotations

import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples.demo.tools_server import Reply, ToolServer
from sidecar._proto.agentsidecar.v1 import sidecar_pb2
from sidecar.client import PolicyDenied, Unauthenticated, Unavailable
from sidecar.identity.dev_authority import DevAuthority
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.identity.jwt_svid import validate_jwt_svid
from sidecar.identity.workload import parse_jwt_bundles
from tests.conftest import audit_lines
from tests.support.settle import poll

AGENT = "spiffe://demo.example/agent/support"
TICKETS_AUD = "spiffe://demo.example/tickets"


def _pod(socket_path, **extra):
    return {"mode": "pod", "socket": f"unix://{socket_path}", **extra}


def _with_jwt_auth(tools_url: str) -> dict:
    return {
        "tickets": {"base_url": tools_url, "auth": {"type": "jwt-svid", "audience": TICKETS_AUD}},
        "kb": {"base_url": tools_url},
        "payments": {"base_url": tools_url},
        "partner": {"base_url": tools_url},
    }


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return reply.status


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pod_mode_subject_is_the_pods_svid(start_sidecar, tools, workload_api):
    running = start_sidecar(tools.url, identity=_pod(workload_api.socket_path))
    assert _wait(lambda: _health(running.address) == health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.insecure_channel(running.address)
    call = channel.unary_unary(
        "/agentsidecar.v1.Sidecar/CallTool",
        request_serializer=sidecar_pb2.CallToolRequest.SerializeToString,
        response_deserializer=sidecar_pb2.CallToolResponse.FromString,
    )
    reply = call(
        sidecar_pb2.CallToolRequest(tool="tickets.get", arguments_json='{"id": "1"}'),
        metadata=(("x-spiffe-id", "spiffe://demo.example/agent/admin"),),
    )
    channel.close()
    assert reply.decision.effect == "allow"
    [record] = audit_lines(running.audit_path)
    assert record["subject"]["spiffe_id"] == AGENT
    assert record["subject"]["attestation"] == "pod-svid"
    expected_expiry = workload_api.api.svid.leaf.not_valid_after_utc.timestamp()
    assert record["subject"]["expires_at"] == int(expected_expiry)


def test_not_serving_until_the_first_svid_arrives(start_sidecar, tools, authority, tmp_path):
    socket_path = tmp_path / "late" / "wl.sock"
    running = start_sidecar(tools.url, identity=_pod(socket_path))
    assert _health(running.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "identity_not_ready"
    server = DevWorkloadApiServer(DevWorkloadApi(authority, AGENT), socket_path).start()
    try:
        assert _wait(lambda: _health(running.address) == health_pb2.HealthCheckResponse.SERVING)
        with running.client() as client:
            assert client.call_tool("tickets.get", {"id": "1"}).status == 200
    finally:
        server.stop()
    assert audit_lines(running.audit_path)[0]["outcome"]["code"] == "identity_not_ready"


def test_rotation_during_a_stream_of_calls_fails_none(start_sidecar, tools, workload_api):
    running = start_sidecar(
        tools.url, identity=_pod(workload_api.socket_path), targets=_with_jwt_auth(tools.url)
    )
    assert _wait(lambda: _health(running.address) == health_pb2.HealthCheckResponse.SERVING)
    failures: list[Exception] = []
    done = threading.Event()

    def calls() -> None:
        with running.client() as client:
            for i in range(150):
                try:
                    client.call_tool("tickets.get", {"id": str(i)})
                except Exception as exc:  # any failure counts
                    failures.append(exc)
        done.set()

    identity = running.sidecar.identity
    thread = threading.Thread(target=calls)
    thread.start()
    rotations = 0
    while not done.is_set() and rotations < 5:
        # Barriers, not pauses: a call was relayed since the last rotation, and each rotation
        # has reached the sidecar before the next: rotations and calls interleave.
        relayed = len(tools.received)
        poll(lambda n=relayed: done.is_set() or len(tools.received) > n, what="a relayed call")
        workload_api.api.rotate()
        rotations += 1
        poll(lambda n=rotations: identity.rotations >= n, what="the rotation applied")
    thread.join(60)
    assert failures == []
    assert rotations >= 3
    assert identity.snapshot().chain[0].serial_number == workload_api.api.svid.leaf.serial_number
    assert len(audit_lines(running.audit_path)) == 150


def test_workload_api_down_keeps_serving_until_the_svid_expires(
    start_sidecar, tools, workload_api, authority
):
    workload_api.api.set_svid(authority.issue_x509(AGENT, ttl_s=3))
    running = start_sidecar(tools.url, identity=_pod(workload_api.socket_path))
    identity = running.sidecar.identity
    assert _wait(lambda: identity.ready and identity.snapshot().expires_at - time.time() < 5)
    expires_at = identity.snapshot().expires_at
    workload_api.stop()  # the SPIRE agent goes away
    with running.client() as client:
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200  # cached SVID
        # The sidecar's clock (this process's) passes the SVID's expiry: polled, bounded.
        poll(lambda: time.time() >= expires_at, what="the SVID's expiry")
        with pytest.raises(Unauthenticated) as failed:
            client.call_tool("tickets.get", {"id": "2"})
    assert failed.value.code == "svid_expired"
    assert _wait(lambda: _health(running.address) == health_pb2.HealthCheckResponse.NOT_SERVING)
    assert len(tools.received) == 1


def test_upstream_gets_a_jwt_svid_for_exactly_its_audience(start_sidecar, tools, workload_api):
    running = start_sidecar(
        tools.url, identity=_pod(workload_api.socket_path), targets=_with_jwt_auth(tools.url)
    )
    assert _wait(lambda: _health(running.address) == health_pb2.HealthCheckResponse.SERVING)
    with running.client() as client:
        task = client.start_task("tickets").task_id
        first = client.call_tool("tickets.get", {"id": "1"}, task_id=task)
        client.call_tool("tickets.create", {"title": "t"}, task_id=task)
        client.call_tool("kb.search", {"q": "x"})
    tickets = [r for r in tools.received if r.path.startswith("/tickets")]
    kb = [r for r in tools.received if r.path.startswith("/kb")]
    tokens = [r.headers["authorization"].removeprefix("Bearer ") for r in tickets]
    bundles = parse_jwt_bundles(workload_api.api._jwt_bundles())
    for token in tokens:
        verified = validate_jwt_svid(token, audience=TICKETS_AUD, bundles=bundles)
        assert verified.spiffe_id == AGENT
        assert verified.audience == (TICKETS_AUD,)  # exactly its audience, nothing more
    assert tokens[0] == tokens[1]  # cached (for the task) until shortly before expiry
    assert "authorization" not in kb[0].headers  # a target without auth gets none
    # The agent never sees it: not in the response, not in the audit log.
    assert tokens[0].encode() not in first.body
    assert tokens[0] not in running.audit_path.read_text()


def _policy_with_credential(tmp_path, audience: str, ttl_s: int) -> str:
    directory = tmp_path / "cred-policy" / "agentsidecar" / "authz"
    directory.mkdir(parents=True)
    (directory / "authz.rego").write_text(
        "package agentsidecar.authz\n\nimport rego.v1\n\n"
        'decision := {"effect": "allow", "reasons": [], "obligations": '
        f'{{"credential": {{"audience": "{audience}", "ttl_s": {ttl_s}}}}}}}\n'
    )
    return str(tmp_path / "cred-policy")


def test_credential_obligation_narrows_the_audience(start_sidecar, tools, workload_api, tmp_path):
    narrowed = "spiffe://demo.example/tickets/read"
    running = start_sidecar(
        tools.url,
        identity=_pod(workload_api.socket_path),
        targets=_with_jwt_auth(tools.url),
        policy={"dir": _policy_with_credential(tmp_path, narrowed, 600)},
    )
    assert _wait(lambda: running.sidecar.identity.ready)
    with running.client() as client:
        client.call_tool("tickets.get", {"id": "1"})
    token = tools.received[0].headers["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == [narrowed]


def test_a_credential_policy_cannot_get_is_refused_before_relay(
    start_sidecar, tools, workload_api, tmp_path
):
    # The Workload API issues 300 s JWT-SVIDs; policy allows at most 60 s.
    running = start_sidecar(
        tools.url,
        identity=_pod(workload_api.socket_path),
        targets=_with_jwt_auth(tools.url),
        policy={"dir": _policy_with_credential(tmp_path, TICKETS_AUD, 60)},
    )
    assert _wait(lambda: running.sidecar.identity.ready)
    with running.client() as client, pytest.raises(Unavailable) as failed:
        client.call_tool("tickets.get", {"id": "1"})
    assert failed.value.code == "credential_unavailable"
    assert "60s" in str(failed.value)
    with running.client() as client, pytest.raises(Unavailable):
        client.call_tool("kb.search", {"q": "x"})  # a target with no credential configured
    assert tools.received == []


def test_pod_mode_refuses_a_non_loopback_listener(tools, tmp_path):
    from sidecar.config import ConfigError
    from tests.support.running import sidecar_settings

    with pytest.raises(ConfigError, match=r"server\.listen"):
        sidecar_settings(
            tmp_path,
            tools.url,
            identity=_pod(tmp_path / "wl.sock"),
            server={"listen": ["0.0.0.0:7443"]},
        )


def test_deny_still_denies_in_pod_mode(start_sidecar, workload_api):
    with ToolServer() as upstream:
        running = start_sidecar(upstream.url, identity=_pod(workload_api.socket_path))
        assert _wait(lambda: running.sidecar.identity.ready)
        with running.client() as client, pytest.raises(PolicyDenied):
            client.call_tool("tickets.close", {"id": "1"})
        assert upstream.received == []


def test_mtls_upstream_gets_the_sidecars_svid_and_is_verified(
    start_sidecar, workload_api, authority, tmp_path
):
    import ssl

    upstream_svid = authority.issue_x509(
        "spiffe://demo.example/tickets-api", dns_names=("localhost",)
    )
    cert, key = tmp_path / "up.crt", tmp_path / "up.key"
    cert.write_bytes(upstream_svid.chain_pem)
    key.write_bytes(upstream_svid.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=authority.x509_bundle_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED  # the upstream demands a client SVID
    arrived, release = threading.Event(), threading.Event()

    def ticket(received):  # /tickets/slow is held until the test releases it
        if received.path.endswith("/slow"):
            arrived.set()
            release.wait(30)
        return Reply(body={"id": received.path.rsplit("/", 1)[1]})

    with ToolServer({("GET", "/tickets/"): ticket}, tls=context) as upstream:
        url = upstream.url.replace("127.0.0.1", "localhost")
        targets = {
            "tickets": {"base_url": url, "auth": {"type": "mtls"}},
            "kb": {"base_url": url},
            "payments": {"base_url": url},
            "partner": {"base_url": url},
        }
        running = start_sidecar(url, identity=_pod(workload_api.socket_path), targets=targets)
        # Ready means the rotation listeners (the mTLS client context) have run.
        assert _wait(lambda: running.sidecar.identity.ready)
        with running.client() as client, ThreadPoolExecutor(1) as pool:
            assert client.call_tool("tickets.get", {"id": "1"}).status == 200
            # A call in flight on the old client certificate when the SVID rotates
            slow = pool.submit(client.call_tool, "tickets.get", {"id": "slow"})
            assert arrived.wait(30)
            workload_api.api.rotate()
            assert _wait(lambda: running.sidecar.identity.rotations >= 1)
            assert client.call_tool("tickets.get", {"id": "2"}).status == 200  # the new one
            release.set()
            assert slow.result(30).status == 200  # finished on its connection, not broken
        assert [r.peer_san for r in upstream.received] == [(("URI", AGENT),)] * 3
        # An upstream whose certificate is not from the trust bundle is refused.
        other = DevAuthority("demo.example").issue_x509(
            "spiffe://demo.example/tickets-api", dns_names=("localhost",)
        )
        cert.write_bytes(other.chain_pem)
        key.write_bytes(other.key_pem)
        impostor_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        impostor_ctx.load_cert_chain(cert, key)
        with ToolServer(tls=impostor_ctx) as impostor:
            impostor_url = impostor.url.replace("127.0.0.1", "localhost")
            (tmp_path / "b").mkdir()
            bad = start_sidecar(
                impostor_url,
                identity=_pod(workload_api.socket_path),
                targets={
                    **targets,
                    "tickets": {"base_url": impostor_url, "auth": {"type": "mtls"}},
                },
                server={"listen": [f"unix://{tmp_path}/b/agent.sock"]},
                audit={"path": str(tmp_path / "b" / "audit.log")},
                # Its own approvals socket: a live sidecar's is never taken over (item 13).
                approvals={"listen": f"unix://{tmp_path}/b/approvals.sock"},
            )
            assert _wait(lambda: bad.sidecar.identity.ready)
            with bad.client() as client, pytest.raises(Unavailable) as failed:
                client.call_tool("tickets.get", {"id": "1"})
            assert failed.value.code == "upstream_unavailable"
            assert impostor.received == []


AGENT_UID, OTHER_UID, AGENT_GID = 65534, 65533, 12345
SYSTEM_PYTHON = "/usr/bin/python3"


def _connect_as(path: str, uid: int, groups: list[int]) -> str:
    """Connect to the unix socket at ``path`` from a process running as ``uid``."""
    import subprocess

    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1]); print('connected')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe, path],  # (the venv's python is under /root)
        user=uid,
        group=uid,
        extra_groups=groups,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to run probes as other users) and /usr/bin/python3",
)
def test_item12_only_the_agents_group_may_connect_to_the_default_unix_listener(
    start_sidecar, tools, workload_api
):
    """The agent API is a unix socket whose mode (0660) and group decide who may call: a
    process in the agent's group connects, any other user is refused by the kernel."""
    import tempfile

    run_dir = Path(tempfile.mkdtemp(prefix="agent-sidecar-run-"))
    run_dir.chmod(0o711)  # others may reach the socket, not list the directory
    socket_path = run_dir / "agent.sock"
    running = start_sidecar(
        tools.url,
        identity=_pod(workload_api.socket_path),
        server={"listen": [f"unix://{socket_path}"], "socket_group": str(AGENT_GID)},
    )
    info = socket_path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == AGENT_GID
    assert _connect_as(str(socket_path), AGENT_UID, [AGENT_GID]) == "connected"
    assert _connect_as(str(socket_path), OTHER_UID, []) == "refused"
    with running.client() as client:  # and the sidecar serves it
        assert client.call_tool("tickets.get", {"id": "1"}).status == 200
