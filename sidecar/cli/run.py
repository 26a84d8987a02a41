"""Commands that run something: the sidecar, its health probe, the webhook, the egress lock,
one policy decision from a config, and the development Workload API."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sidecar.errors import SidecarError

__all__ = ["check", "dev_workload_api", "egress_lock", "health", "serve", "webhook_serve"]


def serve(args: argparse.Namespace) -> int:
    from sidecar.config import load_settings
    from sidecar.logs import configure_logging
    from sidecar.workers import (
        WORKER_ENV,
        WorkerRole,
        available_cpus,
        die_with_supervisor,
        exec_supervisor,
        planned_workers,
        signal_ready,
    )

    configure_logging(args.log_level)
    settings = load_settings(args.config, overrides=args.set)  # a bad config: exit 2 here
    count = planned_workers(settings, available_cpus())
    if count > 1 and WORKER_ENV not in os.environ:
        # The supervisor: this process becomes a small one that imports none of the sidecar
        # (sidecar/supervisor.py), and runs the workers, each `serve` again.
        command = [sys.executable, "-m", "sidecar.cli", *sys.argv[1:]]
        exec_supervisor(command, count, settings.state.dir, settings.server.grace_s, args.log_level)
        raise AssertionError("exec_supervisor returned")  # pragma: no cover
    # Only now the application: a supervisor never imports it.
    from sidecar._lazy import component
    from sidecar.listeners import ListenError

    with component(str(args.config), "the application"):
        from sidecar.app import Sidecar
        from sidecar.server import serve_until_signalled

    role = WorkerRole.from_env()
    die_with_supervisor()

    # A component the configuration turns on is imported while the application is built or
    # started (sidecar/app.py): one that cannot be is an error naming this file (exit 2).
    # Only those two steps: an error while serving (hours later) is not a missing component.
    what = "a component this configuration turns on"
    loading = functools.partial(component, str(args.config), what)

    async def serve() -> None:
        # grpc.aio binds to the running loop: build inside it.
        with loading():
            sidecar = Sidecar.build(settings, role)
        try:
            reload = sidecar.reloader.request if sidecar.reloader else None
            await serve_until_signalled(
                _Starting(sidecar, loading), on_hup=reload, on_started=signal_ready
            )
        finally:
            sidecar.close()  # idempotent: after a clean stop, nothing is left to close

    try:
        asyncio.run(serve())
    except ListenError as exc:  # a socket or port taken: name the file too (exit 2)
        raise ListenError(f"{args.config}: {exc}") from None
    return 0


@dataclass(frozen=True)
class _Starting:
    """The sidecar as ``serve_until_signalled`` runs it, its start under ``loading``."""

    sidecar: Any
    loading: Callable[[], AbstractContextManager[None]]

    async def start(self) -> None:
        with self.loading():
            await self.sidecar.start()

    async def stop(self) -> None:
        await self.sidecar.stop()


def health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(args.addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"not serving: {exc.code().name}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def webhook_serve(args: argparse.Namespace) -> int:
    import ssl

    from sidecar.logs import configure_logging
    from sidecar.webhook.server import WebhookServer

    configure_logging("info")
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SidecarError(f"--listen {args.listen!r} is not HOST:PORT")
    try:
        server = WebhookServer(
            args.config,
            args.tls_cert,
            args.tls_key,
            host=host or "0.0.0.0",  # noqa: S104 - the API server must reach the webhook
            port=int(port),
        )
    except (OSError, ssl.SSLError) as exc:
        raise SidecarError(f"cannot start the webhook: {exc}") from exc
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


def check(args: argparse.Namespace) -> int:
    from sidecar.components import build_engine
    from sidecar.config import load_settings
    from sidecar.policy import Decision, DecisionError, parse_decision

    settings = load_settings(args.config)
    try:
        input_doc = json.loads(args.input.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{args.input}: cannot read a JSON input document: {exc}") from exc
    engine = build_engine(settings)
    try:
        result = engine.evaluate_sync(input_doc)  # type: ignore[attr-defined]
        decision = parse_decision(result.value, defined=result.defined)
    except DecisionError as exc:
        decision = Decision.fail_closed(exc)
    finally:
        engine.close()
    out = decision.to_dict() | {"policy_revision": engine.revision}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def dev_workload_api(args: argparse.Namespace) -> int:
    from sidecar.dev import run_dev_workload_api
    from sidecar.logs import configure_logging

    configure_logging("warning")
    if len(args.socket) != len(args.spiffe_id):
        raise SidecarError("give one --spiffe-id for each --socket")
    return run_dev_workload_api(
        trust_domain=args.trust_domain,
        identities=[(str(s), i) for s, i in zip(args.socket, args.spiffe_id, strict=True)],
        x509_ttl_s=args.x509_ttl,
        jwt_ttl_s=args.jwt_ttl,
        rotate_every_s=args.rotate_every,
        bundle_out=args.bundle_out,
        dns_names=args.dns_name,
    )


def egress_lock(args: argparse.Namespace) -> int:
    """The egress-lock commands live with the lock (sidecar/egress_lock/cli.py)."""
    from sidecar.egress_lock.cli import install

    return install(args)
