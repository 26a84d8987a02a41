"""Readiness is never SERVING before the first readiness check has said so.

gRPC's health service starts out SERVING. The sidecar used to start its gRPC server and only
then begin checking (SVID held, engine deciding, audit writable), so a probe answered in
between (the kubelet's, on the agent API or ``server.health_listen``) called a sidecar ready
that had checked nothing. The check is made slow here (as OPA's ``/health?bundles`` can be,
up to its 1 s bound) so that the window is wide open: every answer during it must be
NOT_SERVING, then SERVING once the check passes.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.frontdoor import FrontDoor
from sidecar.server import SERVICE_NAME, SidecarServer
from tests.support.running import RunningSidecar, sidecar_settings
from tests.support.settle import poll

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(address: str, service: str = "") -> int | None:
    """The health answer, or None while nothing listens yet."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
    except grpc.RpcError:
        return None
    return reply.status


def _start_blocked(settings, first_step: threading.Event, release: threading.Event):
    """Start a RunningSidecar in a thread; returns (thread, holder list)."""
    started: list[RunningSidecar] = []
    starter = threading.Thread(target=lambda: started.append(RunningSidecar(settings)))
    starter.start()
    assert first_step.wait(30), "the sidecar never reached the blocked start-up step"
    return starter, started


def _finish(starter: threading.Thread, started: list[RunningSidecar], release) -> None:
    release.set()
    starter.join(30)
    for running in started:
        running.stop()


def test_s12_readiness_is_not_serving_until_the_first_check_passes(
    tmp_path: Path, tools, monkeypatch
):
    first_check = threading.Event()
    release = threading.Event()
    real = SidecarServer._serving

    def slow_first_check(self: SidecarServer) -> bool:
        if not release.is_set():
            first_check.set()
            assert release.wait(30), "the test never released the first check"
        return real(self)

    monkeypatch.setattr(SidecarServer, "_serving", slow_first_check)
    settings = sidecar_settings(tmp_path, tools.url)
    address = settings.server.listen[0]
    starter, started = _start_blocked(settings, first_check, release)
    try:
        # The server listens and the check has not answered: every probe says NOT_SERVING.
        poll(lambda: _status(address) is not None, what="the agent API listening")
        for _ in range(20):
            assert _status(address) == NOT_SERVING
            assert _status(address, SERVICE_NAME) == NOT_SERVING
        release.set()
        starter.join(30)
        assert started, "the sidecar did not start"
        # Once the check passes, start-up has already published it: ready at once.
        assert _status(address) == SERVING
        assert _status(address, SERVICE_NAME) == SERVING
    finally:
        _finish(starter, started, release)


def test_s12_readiness_waits_for_every_listener_not_only_the_agent_api(
    tmp_path: Path, tools, monkeypatch
):
    """The agent API listens first; the front door (and MCP, A2A) after it. Ready means the
    whole sidecar serves: NOT_SERVING while the front door is still starting."""
    in_frontdoor = threading.Event()
    release = threading.Event()
    real = FrontDoor.start

    async def slow_start(self: FrontDoor) -> None:
        in_frontdoor.set()
        await asyncio.to_thread(release.wait, 30)
        await real(self)

    monkeypatch.setattr(FrontDoor, "start", slow_start)
    settings = sidecar_settings(tmp_path, tools.url, frontdoor={"listen": "127.0.0.1:0"})
    address = settings.server.listen[0]
    starter, started = _start_blocked(settings, in_frontdoor, release)
    try:
        poll(lambda: _status(address) is not None, what="the agent API listening")
        for _ in range(10):
            assert _status(address) == NOT_SERVING
        release.set()
        starter.join(30)
        assert started, "the sidecar did not start"
        assert _status(address) == SERVING
    finally:
        _finish(starter, started, release)


def test_s12_a_sidecar_stopped_during_its_first_check_tracks_health_no_more(
    tmp_path: Path, tools, monkeypatch
):
    """SIGTERM can come while start-up still runs its first readiness check: once that check
    returns, no health loop may start on the stopped server."""
    first_check = threading.Event()
    release = threading.Event()
    real_serving, real_start = SidecarServer._serving, SidecarServer.start
    seen: list[tuple[SidecarServer, asyncio.AbstractEventLoop]] = []

    async def recording_start(self: SidecarServer) -> None:
        seen.append((self, asyncio.get_running_loop()))
        await real_start(self)

    def slow_first_check(self: SidecarServer) -> bool:
        if not release.is_set():
            first_check.set()
            assert release.wait(30), "the test never released the first check"
        return real_serving(self)

    monkeypatch.setattr(SidecarServer, "start", recording_start)
    monkeypatch.setattr(SidecarServer, "_serving", slow_first_check)
    starter, started = _start_blocked(sidecar_settings(tmp_path, tools.url), first_check, release)
    try:
        server, loop = seen[0]
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        release.set()
        starter.join(30)
        assert server._health_task is None, "a health loop started on a stopped server"
    finally:
        _finish(starter, started, release)
