"""The kubelet's probe port: gRPC ``Health/Check`` only, on ``server.health_listen``.

Kubernetes' native ``grpc:`` probes connect to the pod's IP, never to a unix socket or the
loopback the agent API listens on; an ``exec`` probe starts a Python CLI every period (about
60 MB and 0.3 CPU-seconds each). This listener answers the probe from the running sidecar
for nothing per period, and serves nothing else: no agent API, no ``Watch`` stream (which
would let anyone on the pod network hold streams open), requests of at most 1 KiB.

* service ``""`` (readiness, startup): the sidecar's health, the same status as on the agent
  listener (SERVING once the SVID has arrived, the engine can decide and audit can be
  written);
* service ``liveness``: SERVING whenever the event loop answers (restarting the sidecar
  would not bring an absent SVID or a dead OPA back, so liveness does not ask about them).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["LIVENESS", "HealthListener"]

LIVENESS = "liveness"
_MAX_REQUEST = 1024


class HealthListener:
    """A second grpc.aio server on ``address`` that answers Health/Check from ``servicer``."""

    def __init__(self, servicer: HealthServicer, address: str) -> None:
        self._servicer = servicer
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_REQUEST),
                ("grpc.max_concurrent_streams", 8),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = f"{address.rpartition(':')[0]}:{port}"

    async def _check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service == LIVENESS:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        return await self._servicer.Check(request, context)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace_s: float) -> None:
        await self._server.stop(grace_s)
