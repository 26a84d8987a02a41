"""Build a running sidecar from settings: the one place components are wired together."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.audit import JsonlFileSink
from sidecar.config import Settings
from sidecar.identity import Attestor, StaticAttestor
from sidecar.pipeline import Mediator
from sidecar.policy import EmbeddedEngine, PolicyEngine
from sidecar.relay import HttpRelay
from sidecar.server import SidecarServer

__all__ = ["Sidecar", "build_attestor", "build_engine"]


def build_engine(settings: Settings) -> PolicyEngine:
    policy = settings.policy
    return EmbeddedEngine.from_dir(policy.dir, policy.query, workers=policy.workers)


def build_attestor(settings: Settings) -> Attestor:
    return StaticAttestor(settings.identity.spiffe_id)


@dataclass
class Sidecar:
    """All components of one sidecar; ``start``/``stop`` run its gRPC server."""

    settings: Settings
    engine: PolicyEngine
    relay: HttpRelay
    audit: JsonlFileSink
    mediator: Mediator
    server: SidecarServer

    @classmethod
    def build(cls, settings: Settings) -> Sidecar:
        """Everything that can fail (policy load, audit file) fails here, before listening."""
        engine = build_engine(settings)
        audit = JsonlFileSink(settings.audit.path, fsync=settings.audit.fsync)
        relay = HttpRelay(
            settings.targets,
            max_response_bytes=settings.relay.max_response_bytes,
            pool_size=settings.relay.max_concurrency,
        )
        mediator = Mediator(
            settings=settings,
            engine=engine,
            attestor=build_attestor(settings),
            relay=relay,
            audit=audit,
        )
        return cls(settings, engine, relay, audit, mediator, SidecarServer(settings, mediator))

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(grace_s)
        self.close()

    def close(self) -> None:
        self.mediator.close()
        self.relay.close()
        self.engine.close()
        self.audit.close()
