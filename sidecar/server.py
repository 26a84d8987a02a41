"""gRPC wiring: the agent API (its handlers in sidecar/service.py), health, reflection,
graceful shutdown.

The transport's own limit is set well above ``server.max_request_bytes`` (4x) as a hard
ceiling against memory exhaustion; a message beyond it is refused by gRPC with
RESOURCE_EXHAUSTED before any of this code runs. Below it, the handlers refuse and audit.
"""

from __future__ import annotations

import asyncio
import gc
import grp
import logging
import os
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sidecar.calls.guarded import GuardedPath
from sidecar.calls.models import ModelCalls
from sidecar.calls.tasks import TaskCalls
from sidecar.calls.tools import ToolCalls
from sidecar.config import Settings
from sidecar.health_listener import HealthListener
from sidecar.identity import WorkloadIdentity
from sidecar.identity.server_tls import mtls_server_credentials
from sidecar.listeners import UnixSocketClaim, claim_unix_socket, listening
from sidecar.policy import PolicyEngine
from sidecar.service import SERVICE_NAME, SidecarService
from sidecar.workers import WorkerRole, WorkersStatus

__all__ = ["SERVICE_NAME", "SidecarServer", "mtls_server_credentials"]

log = logging.getLogger(__name__)


class SidecarServer:
    """Owns the grpc.aio server and its listeners.

    Health is NOT_SERVING until the Workload API has delivered the first SVID, and again
    whenever the cached SVID has expired without a replacement, the engine cannot decide, or
    audit records can no longer be written.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        path: GuardedPath,
        tools: ToolCalls,
        models: ModelCalls,
        tasks: TaskCalls,
        identity: WorkloadIdentity | None = None,
        engine: PolicyEngine | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self._settings = settings
        self._path = path  # health: can audit records still be written
        self._identity = identity
        self._engine = engine
        self._role = role or WorkerRole()
        self._health_task: asyncio.Task[None] | None = None
        self._stopping = False
        limit = settings.server.max_request_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit * 4 + 4096),
                # Shared by the workers; else a port in use fails the start.
                ("grpc.so_reuseport", 1 if self._role.shared else 0),
            ]
        )
        service = SidecarService(
            path=path, tools=tools, models=models, tasks=tasks, max_request_bytes=limit
        )
        self._server.add_generic_rpc_handlers((service.handlers(),))
        self.service = service  # the wiring gives it the A2A peers (CallPeer, StreamPeer)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if settings.server.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self._server,
            )
        self.addresses: list[str] = []
        self._claims: list[UnixSocketClaim] = []
        self.probe_listener: HealthListener | None = None
        try:
            for address in settings.server.listen:
                if address.startswith("unix:") and not self._role.primary:
                    continue  # a unix socket is served by worker 0 alone
                self.addresses.append(self._bind(address))
            if settings.server.health_listen and self._role.primary:  # the kubelet's probes
                with listening("server.health_listen", settings.server.health_listen):
                    self.probe_listener = HealthListener(self.health, settings.server.health_listen)
        except BaseException:
            self.release()
            raise
        if self._role.shared and self._role.primary and unix_only(settings.server.listen):
            # Every agent call lands on this worker (docs/performance.md, the pod-mode cliff).
            log.warning(
                "the agent API listens on unix sockets only: worker 0 serves every call and "
                "the other workers only the TCP listeners (front door, MCP); agent calls get "
                "one core. Add a TCP server.listen (identity.pod_tcp in mode pod) to use all",
                extra={"workers": self._role.count},
            )

    def _bind(self, address: str) -> str:
        with listening("server.listen", address):
            if address.startswith("unix:"):
                return self._bind_unix(Path(address.removeprefix("unix://").removeprefix("unix:")))
            if self._settings.identity.mode == "mtls":
                port = self._server.add_secure_port(address, self._mtls_credentials())
            else:
                port = self._server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"cannot listen on {address}")
            return f"{address.rpartition(':')[0]}:{port}"

    def _bind_unix(self, path: Path) -> str:
        # Never take over a socket a live sidecar serves: held until this process stops.
        claim = claim_unix_socket(path, "server.listen")
        self._claims.append(claim)
        if self._settings.identity.mode == "mtls":
            self._server.add_secure_port(f"unix:{path}", self._mtls_credentials())
        else:
            self._server.add_insecure_port(f"unix:{path}")
        # Before the server listens: who may connect is the file's mode and group.
        restrict_socket(path, self._settings.server.socket_mode, self._settings.server.socket_group)
        return f"unix:{path}"

    def release(self) -> None:
        """Give up the claims on the unix sockets (after stopping, or a failed start)."""
        for claim in self._claims:
            claim.release()
        self._claims.clear()

    def _mtls_credentials(self) -> grpc.ServerCredentials:
        assert self._identity is not None
        return mtls_server_credentials(self._identity, self._settings.identity.trust_domains)

    def _serving(self) -> bool:
        """Ready: the engine can decide (OPA: bundles active), audit records can be written,
        and, with SPIFFE identity, a current SVID is held. Blocking (asks OPA): runs off the
        event loop."""
        if self._engine is not None and not self._engine.healthy():
            return False
        if not self._path.audit_alive():
            return False
        if self._role.shared:  # every worker runs (a dead one is being restarted)
            status = WorkersStatus.read(self._settings.state.dir)
            if status is not None and not status.complete:
                return False
        if self._identity is None:
            return True
        try:
            self._identity.snapshot()
        except Exception:
            return False
        return self._identity.ready

    async def _check_health(self, current: bool | None) -> bool:
        """One readiness check, published to both health names when it changed."""
        try:
            serving = await asyncio.to_thread(self._serving)
        except Exception:  # the check itself failed: not serving, and say why
            log.exception("health check failed")
            serving = False
        if serving != current:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in ("", SERVICE_NAME):
                await self.health.set(service, status)
            log.info("health", extra={"serving": serving})
        return serving

    async def _track_health(self, current: bool) -> None:
        while True:
            await asyncio.sleep(0.05 if not current else 0.5)
            current = await self._check_health(current)

    async def start(self) -> None:
        """Listen, NOT_SERVING: gRPC's health service starts out SERVING, and a probe answered
        before the first readiness check (the kubelet's, on ``server.health_listen``) would call
        ready a sidecar that holds no SVID yet, or whose engine or audit log is not usable. The
        owner calls :meth:`track_health` once everything else it serves is listening too."""
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        if self.probe_listener is not None:
            await self.probe_listener.start()
        log.info("listening", extra={"addresses": self.addresses, "pid": os.getpid()})

    async def track_health(self) -> None:
        """The first readiness check, published at once (ready as soon as start-up ends when
        it already is), then one every 0.5 s (0.05 s while not ready). Not after ``stop``."""
        current = await self._check_health(None)
        if not self._stopping:
            self._health_task = asyncio.create_task(self._track_health(current))

    async def stop(self, grace_s: float | None = None) -> None:
        self._stopping = True
        if self._health_task is not None:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        grace = self._settings.server.grace_s if grace_s is None else grace_s
        if self.probe_listener is not None:
            await self.probe_listener.stop(0)
        await self._server.stop(grace)
        self.release()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def unix_only(listen: Any) -> bool:
    """The agent API has listeners, all unix sockets: served by one process only (gRPC can
    neither share a socket path between processes nor adopt an inherited listener)."""
    addresses = list(listen)
    return bool(addresses) and all(a.startswith("unix:") for a in addresses)


def restrict_socket(path: Path, mode: str, group: str) -> None:
    """Give the unix socket at ``path`` its configured mode and group (connecting needs write
    permission on it, so this decides who may call)."""
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"server.socket_group: no group {group!r}") from None
        os.chown(path, -1, gid)
    os.chmod(path, int(mode, 8))


def settle_heap() -> None:
    """Hide what start-up built from the cyclic garbage collector (``gc.freeze``).

    Start-up leaves ~70k container objects (modules, the compiled policy, gRPC, SPIFFE and
    HTTP clients) that live as long as the process. Each full (generation 2) collection
    traversed all of them on the event loop: a 30-50 ms stall every few seconds at load,
    the flat p99 of the pod-mode tail (docs/performance.md). Frozen objects are still freed
    when their last reference goes; only a reference cycle among them is never collected
    (start-up's objects are held for the process's life; a revision replaced by a reload
    may leave one such cycle behind)."""
    gc.collect()
    gc.freeze()


async def serve_until_signalled(server: Any, on_hup: Any = None, on_started: Any = None) -> None:
    """Start ``server`` (anything with async ``start`` and ``stop``: the whole sidecar), then
    stop it gracefully on SIGTERM or SIGINT; SIGHUP calls ``on_hup``; ``on_started`` is
    called once it serves."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await server.start()
    settle_heap()
    if on_started is not None:
        on_started()
    await stop.wait()
    log.info("shutting down")
    await server.stop()
