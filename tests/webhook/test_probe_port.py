"""The kubelet's probe port (``server.health_listen``) on a real sidecar, over real gRPC: the
injected ``grpc:`` probes get the sidecar's health from the running process, and nothing
else is served there."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import ConfigError
from sidecar.server import SERVICE_NAME
from tests.support.running import sidecar_settings
from tests.support.settle import poll

SERVING = health_pb2.HealthCheckResponse.SERVING


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


def test_probes_the_running_sidecar_answers_readiness_and_liveness(probe_port):
    # SERVING once the health task has looked once
    poll(lambda: _check(probe_port) == SERVING, what="SERVING")
    assert _check(probe_port, "liveness") == SERVING
    assert _check(probe_port, SERVICE_NAME) == SERVING


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
