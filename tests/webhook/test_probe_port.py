"""The kubelet's probe port (``server.health_listen``) on a real sidecar, over real gRPC: the
injected ``grpc:`` probes get the sidecar's health from the running process, and nothing
else is served there.

Readiness is shown to *follow* that health (session 12, item 3): gRPC's health service starts
out SERVING for "", so a SERVING answer right after start proved nothing. The sidecar is started
in identity mode jwt before its Workload API exists: readiness must say NOT_SERVING (no SVID)
while liveness says SERVING, then SERVING once the SVID has arrived."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import ConfigError
from sidecar.identity.dev_workload_api import DevWorkloadApi, DevWorkloadApiServer
from sidecar.server import SERVICE_NAME
from tests.conftest import SIDECAR_AUDIENCE, SIDECAR_ID, SIDECAR_SERVER_NAME
from tests.support.running import sidecar_settings
from tests.support.settle import poll

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def probe_port(start_sidecar, tools):
    running = start_sidecar(tools.url, server={"health_listen": "127.0.0.1:0"})
    listener = running.sidecar.server.probe_listener
    assert listener is not None
    with grpc.insecure_channel(listener.address) as channel:
        yield channel


def _check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_s12_item3_probe_readiness_is_not_serving_until_the_svid_then_serving(
    start_sidecar, tools, authority, tmp_path
):
    socket = tmp_path / "wl.sock"  # no Workload API there yet: the sidecar has no SVID
    identity = {"mode": "jwt", "socket": f"unix://{socket}", "audience": SIDECAR_AUDIENCE}
    running = start_sidecar(tools.url, identity=identity, server={"health_listen": "127.0.0.1:0"})
    listener = running.sidecar.server.probe_listener
    assert listener is not None
    with grpc.insecure_channel(listener.address) as channel:
        # NOT_SERVING from the start (never gRPC's default SERVING: test_s12_readiness_at_start)
        assert _check(channel) == NOT_SERVING
        assert _check(channel, SERVICE_NAME) == NOT_SERVING
        assert _check(channel, "liveness") == SERVING  # liveness does not ask for the SVID
        api = DevWorkloadApiServer(
            DevWorkloadApi(authority, SIDECAR_ID, dns_names=(SIDECAR_SERVER_NAME,)), socket
        ).start()
        try:
            poll(lambda: _check(channel) == SERVING, what="readiness SERVING with the SVID")
            assert _check(channel, SERVICE_NAME) == SERVING
            assert _check(channel, "liveness") == SERVING
        finally:
            api.stop()


def test_probes_nothing_but_check_is_served_there(probe_port):
    watch = health_pb2_grpc.HealthStub(probe_port).Watch(health_pb2.HealthCheckRequest())
    with pytest.raises(grpc.RpcError) as raised:
        next(watch)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    call_tool = probe_port.unary_unary(f"/{SERVICE_NAME}/CallTool")
    with pytest.raises(grpc.RpcError) as raised:
        call_tool(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED  # no agent API on the pod IP
    with pytest.raises(grpc.RpcError) as raised:
        _check(probe_port, "x" * 4096)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as raised:
        _check(probe_port, "no-such-service")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("bad", ["7445", "0.0.0.0", "host:port"])
def test_probes_a_bad_health_listen_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="health_listen"):
        sidecar_settings(tmp_path, "http://127.0.0.1:1", server={"health_listen": bad})
