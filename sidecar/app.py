"""Build a running sidecar from settings: the one place components are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar._lazy import component
from sidecar.approvals import ApprovalBroker, ApprovalStore, Notifier
from sidecar.approvals.admin import AdminServer
from sidecar.approvals.notify import renderer
from sidecar.audit import AuditLog
from sidecar.budgets import Budgets
from sidecar.calls.observe import build_observers
from sidecar.components import (
    approval_auditor,
    build_attestor,
    build_audit,
    build_engine,
    build_identity,
    build_shadow,
    start_bundles,
    svid_expiry,
)
from sidecar.config import Settings
from sidecar.identity import (
    IdentityError,
    UpstreamCredentials,
    WorkloadIdentity,
)
from sidecar.identity.credentials import wire_mtls
from sidecar.listeners import listening
from sidecar.metrics import Metrics
from sidecar.pipeline import Calls, build_calls
from sidecar.policy import EmbeddedEngine, PolicyEngine
from sidecar.policy.export.wiring import build_exports
from sidecar.policy.reload import PolicyReloader
from sidecar.relay import HttpRelay
from sidecar.relay.models import ModelRelay
from sidecar.server import SidecarServer
from sidecar.state import StateDb, open_state
from sidecar.tasks import TaskRegistry
from sidecar.users import TokenExchanger, UserVerifier
from sidecar.workers import WorkerRole

__all__ = ["Sidecar"]

if TYPE_CHECKING:  # imported when configured (see build; docs/performance.md)
    from sidecar.authzen import AuthZenServer
    from sidecar.frontdoor import FrontDoor
    from sidecar.mcp.gateway import McpGateway

log = logging.getLogger(__name__)

# How long an mTLS listener waits for its first SVID before the sidecar gives up starting.
MTLS_READY_TIMEOUT_S = 30.0
# With several workers, how often a call waiting for an approval re-reads the state database
# (the approver's decision may reach another worker).
APPROVAL_POLL_S = 0.25
# How often ended tasks and expired approvals are swept (their ends take effect at once on
# use in any case; the sweep revokes what nobody uses).
SWEEP_INTERVAL_S = 1.0


@dataclass
class Sidecar:
    """All components of one sidecar; ``start``/``stop`` run its gRPC server."""

    settings: Settings
    engine: PolicyEngine
    identity: WorkloadIdentity | None
    relay: HttpRelay
    audit: AuditLog
    calls: Calls
    server: SidecarServer
    shadow: PolicyEngine | None = None
    reloader: PolicyReloader | None = None
    metrics: Metrics | None = None
    admin_port: int | None = None
    state: StateDb | None = None
    tasks: TaskRegistry | None = None
    approvals: ApprovalBroker | None = None
    approvals_server: AdminServer | None = None
    notifier: Notifier | None = None
    models: ModelRelay | None = None
    frontdoor: FrontDoor | None = None
    authzen: AuthZenServer | None = None
    mcp: McpGateway | None = None
    # The inbound A2A listener (sidecar/a2a/inbound.py), when a2a_inbound.listen is set.
    a2a_inbound: Any = None
    # The agent's A2A endpoint (sidecar/a2a/outbound.py), when a2a.listen is set.
    a2a_outbound: Any = None
    # Prunes unused A2A task-ownership rows (sidecar/a2a/ownership_retention.py); worker 0.
    ownership_retention: Any = None
    _sweeper: asyncio.Task[None] | None = None
    _announcer: asyncio.Task[None] | None = None
    role: WorkerRole = dataclasses.field(default_factory=WorkerRole)
    _closed: bool = False

    @classmethod
    def build(cls, settings: Settings, role: WorkerRole | None = None) -> Sidecar:
        """Everything that can fail (policy load, audit file) fails here, before listening.
        ``role``: this process's place among ``server.workers`` (default: the only one)."""
        role = role or WorkerRole()
        engine = build_engine(settings)
        shadow = build_shadow(settings)
        identity = build_identity(settings)
        audit = build_audit(settings, identity, role)
        # An mTLS listener serves with the SVID from its first handshake: the agent API in
        # mode mtls, and the approvals API on HOST:PORT (worker 0) in any mode with identity.
        approvals_tcp = role.primary and not settings.approvals_listen.startswith("unix:")
        if settings.identity.mode == "mtls" or (identity is not None and approvals_tcp):
            assert identity is not None
            if not identity.wait_ready(MTLS_READY_TIMEOUT_S):
                identity.close()
                raise IdentityError(
                    f"no X.509-SVID from the Workload API within {MTLS_READY_TIMEOUT_S:.0f}s; "
                    "the mTLS listener cannot start without one",
                    code="identity_not_ready",
                )
        relay = HttpRelay(
            settings.targets,
            max_response_bytes=settings.relay.max_response_bytes,
            pool_size=settings.relay.max_concurrency,
        )
        if identity is not None:
            wire_mtls(relay, settings.targets, identity)
        credentials = UpstreamCredentials(settings.targets, identity)
        state = open_state(settings.state)
        notifier = None
        if settings.approvals.notify_url:
            notifier = Notifier(
                settings.approvals.notify_url,
                attempts=settings.approvals.notify_attempts,
                timeout_s=settings.approvals.notify_timeout_s,
                render=renderer(settings.approvals),
            )
        record = approval_auditor(audit)
        approvals = ApprovalBroker(
            ApprovalStore(state),
            settings.approvals,
            notify=notifier,
            record=record,
            # A shared store's change feed wakes waiters; workers sharing SQLite poll it.
            poll_s=APPROVAL_POLL_S if role.shared and not state.has_feed else None,
            announces=role.shared and role.primary and not state.has_feed,
        )
        tasks = TaskRegistry(state, settings.tasks)
        models = ModelRelay(
            settings.providers,
            max_response_bytes=settings.relay.max_response_bytes,
            pool_size=settings.relay.max_concurrency,
        )
        tasks.add_end_hook(lambda task: approvals.revoke_task(task.id))
        tasks.add_end_hook(lambda task: credentials.revoke_task(task.id))
        exchanger = TokenExchanger(settings.targets, identity)
        tasks.add_end_hook(lambda task: exchanger.revoke_task(task.id))
        if state.has_feed:  # what other replicas change reaches this one's waiters and caches
            state.subscribe("approval", approvals.heard)
            state.subscribe("task_ended", tasks.ended_elsewhere)
            state.on_resync(approvals.wake_all)
            state.on_resync(tasks.catch_up)
        users = UserVerifier(settings.users)
        calls = build_calls(
            settings=settings,
            engine=engine,
            attestor=build_attestor(settings, identity),
            relay=relay,
            audit=audit,
            tasks=tasks,
            approvals=approvals,
            budgets=Budgets(state, settings.budgets, tasks),
            models=models,
            credentials=credentials,
            shadow=shadow,
            identity=identity,
            users=users,
            exchanger=exchanger,
        )
        metrics = build_observers(settings, calls.path, role.count)
        reloader: PolicyReloader | None = None  # started below; read when scraped
        metrics.watch(
            policy_reload=lambda: reloader,
            oldest_pending_age=approvals.oldest_pending_age_s,
            audit_counts=lambda: {**audit.counts, "alive": audit.alive},
            stats=lambda: dict(calls.path.stats),
            policy=lambda: (engine.name, engine.revision),
            svid_expires_at=lambda: svid_expiry(identity),
            pending_approvals=approvals.pending_count,
            state_available=lambda: state.available,
        )
        # OPA-format status reports and decision logs (sidecar/policy/export); off unless set.
        exports = build_exports(
            settings.policy,
            revision=lambda: engine.revision,
            failing=lambda: bool(reloader and reloader.failing),
            tracker=getattr(engine, "bundle_tracker", None),
        )
        calls.decider.on_decision = exports.hook
        metrics.registry.register(exports.collector())
        # Closed beside the rest of the shutdown (bounded): never delays the audit seal.
        metrics.add_sink(lambda _observation: None, close=exports.begin_close)
        # Listeners last, plain sockets before gRPC ones: a port in use fails the build before
        # any gRPC server exists, and everything already opened is closed again.
        frontdoor: FrontDoor | None = None
        mcp: McpGateway | None = None
        a2a_inbound: Any = None
        a2a_outbound: Any = None
        server: SidecarServer | None = None
        approvals_server: AdminServer | None = None
        try:
            admin_port = None
            if settings.admin.listen and role.primary:
                with listening("admin.listen", settings.admin.listen):
                    admin_port = metrics.serve(settings.admin.listen)
            if settings.frontdoor.listen:
                with component("frontdoor.listen", "the front door"):
                    from sidecar.frontdoor import FrontDoor

                with listening("frontdoor.listen", settings.frontdoor.listen):
                    frontdoor = FrontDoor(settings, calls.models, engine, reuse_port=role.shared)
            server = SidecarServer(
                settings,
                path=calls.path,
                tools=calls.tools,
                models=calls.models,
                tasks=calls.tasks,
                identity=identity,
                engine=engine,
                role=role,
            )
            if role.primary:
                with listening("approvals.listen", settings.approvals_listen):
                    approvals_server = AdminServer(settings, approvals, identity, record)
            if (settings.mcp.listen or settings.mcp_servers) and role.primary:
                # Imported only when configured: the MCP types (pydantic) cost ~10 MB of RSS.
                with component("mcp.listen", "the MCP gateway"):
                    from sidecar.mcp.admin import register as register_mcp_admin
                    from sidecar.mcp.gateway import McpGateway

                with listening("mcp.listen", settings.mcp.listen):
                    mcp = McpGateway(
                        settings, calls.path, calls.gate, calls.decider, relay, credentials, state
                    )
                if approvals_server is not None:
                    approvals_server.add_service(register_mcp_admin(mcp, audit))
            # A2A peer cards (sidecar/a2a/cards.py): the outbound endpoint reads them; the
            # operator reviews and accepts them on the approvals listener.
            cards = None
            if settings.a2a_peers:  # imported only with peers: the card book is theirs
                from sidecar.a2a.cards import build_cards

                cards = build_cards(settings, state, identity)
            if cards is not None and approvals_server is not None:
                from sidecar.a2a.admin import register as register_a2a_admin

                approvals_server.add_service(register_a2a_admin(cards, audit))
            if settings.a2a.listen and role.primary:
                from sidecar.a2a.outbound import A2aOutbound

                with listening("a2a.listen", settings.a2a.listen):
                    a2a_outbound = A2aOutbound(settings, calls.path, state, identity, cards=cards)
            if settings.a2a_inbound.listen and role.primary:
                from sidecar.a2a.inbound import InboundListener

                assert identity is not None  # config: a2a_inbound needs a Workload API
                issuer = settings.users.issuers.get(settings.a2a_inbound.users.issuer)
                with listening("a2a_inbound.listen", settings.a2a_inbound.listen):
                    a2a_inbound = InboundListener(
                        settings.a2a_inbound,
                        path=calls.path,
                        tasks=tasks,
                        identity=identity,
                        users=users,
                        user_issuer_url=issuer.issuer if issuer is not None else "",
                        max_links=settings.delegation.max_links,
                        state=state,
                    )
            if settings.a2a_peers:  # the gRPC API's CallPeer/StreamPeer (sidecar/a2a/grpc_calls.py)
                from sidecar.a2a.grpc_calls import PeerApi, worker_binder

                server.service.peers = PeerApi.for_worker(
                    settings,
                    calls.path,
                    cards=cards,
                    identity=identity,
                    outbound=a2a_outbound,
                    state=state,
                    provenance=(
                        a2a_inbound.provenance
                        if a2a_inbound is not None
                        else worker_binder(settings, tasks, identity)
                    ),
                )
        except BaseException:
            for close in (
                *((a2a_inbound.close,) if a2a_inbound else ()),
                *((a2a_outbound.close,) if a2a_outbound else ()),
                *((frontdoor.close,) if frontdoor else ()),
                *((mcp.close,) if mcp else ()),
                *((server.release,) if server else ()),
                *(
                    (approvals_server.claim.release,)
                    if approvals_server and approvals_server.claim
                    else ()
                ),
                metrics.close,
                engine.close,
                audit.close,
                state.close,
                *((notifier.close,) if notifier else ()),
                *((shadow.close,) if shadow else ()),
                *((identity.close,) if identity else ()),
            ):
                try:
                    close()
                except Exception:
                    log.exception("cleanup after a failed start")
            raise
        reloader = None
        if isinstance(engine, EmbeddedEngine):
            interval = settings.policy.reload_interval_ms / 1000
            reloader = PolicyReloader(engine, interval).start()
        start_bundles(engine, identity)  # policy.bundle: poll the bundle server
        return cls(
            settings,
            engine,
            identity,
            relay,
            audit,
            calls,
            server,
            shadow,
            reloader,
            metrics,
            admin_port,
            state,
            tasks,
            approvals,
            approvals_server,
            notifier,
            models,
            frontdoor,
            mcp=mcp,
            role=role,
            a2a_inbound=a2a_inbound,
            a2a_outbound=a2a_outbound,
        )

    async def start(self) -> None:
        """Start every server; if one cannot (a listener taken), stop those already serving
        before the error propagates (the CLI exits 2 with it, nothing left half-running)."""
        try:
            await self._start()
        except BaseException:
            try:
                await self.stop(0)
            except Exception:
                log.exception("stopping after a failed start")
            raise

    async def _start(self) -> None:
        if self.approvals_server is not None:
            await self.approvals_server.start()
        await self.server.start()
        if self.frontdoor is not None:
            await self.frontdoor.start()
        if self.settings.authzen.listen and self.role.primary:
            from sidecar.authzen import AuthZenServer

            pins = self.mcp.pins if self.mcp is not None else None
            self.authzen = AuthZenServer(self.settings, self.calls.asserted, self.identity, pins)
            with listening("authzen.listen", self.settings.authzen.listen):
                await self.authzen.start()
        if self.mcp is not None:
            await self.mcp.start()
        if self.a2a_inbound is not None:
            await self.a2a_inbound.start()
        if self.a2a_outbound is not None:
            if self.a2a_inbound is not None:  # calls under an inbound task carry its Txn-Token
                self.a2a_outbound.use_provenance(self.a2a_inbound.provenance)
            await self.a2a_outbound.start()
        if self.approvals is not None:
            self.approvals.bind_loop(asyncio.get_running_loop())
        if self.state is not None:
            self.state.start()
            if self.role.primary:
                from sidecar.a2a.ownership_retention import OwnershipRetention

                ttl_s = self.settings.a2a.task_ownership_ttl_s
                self.ownership_retention = OwnershipRetention(self.state, ttl_s)
        self._sweeper = asyncio.create_task(self._sweep())
        if self.role.shared and self.role.primary and not (self.state and self.state.has_feed):
            self._announcer = asyncio.create_task(self._announce())
        # Ready only now: every listener above serves (the agent API alone said nothing).
        await self.server.track_health()

    async def _announce(self) -> None:
        """Worker 0 of several: approvals created by the other workers reach the watchers of
        the approvals API (served here) within APPROVAL_POLL_S."""
        while True:
            await asyncio.sleep(APPROVAL_POLL_S)
            try:
                if self.approvals is not None:
                    await asyncio.to_thread(self.approvals.announce_others)
            except Exception:
                log.exception("announcing other workers' approvals failed")

    async def _sweep(self) -> None:
        """End expired tasks (revoking their approvals and credentials) and expire approvals,
        in a thread: a locked state database must not stall the event loop."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                if self.tasks is not None:
                    await asyncio.to_thread(self.tasks.sweep)
                if self.approvals is not None:
                    await asyncio.to_thread(self.approvals.sweep)
            except Exception:
                log.exception("sweeping tasks and approvals failed")
            try:
                if self.ownership_retention is not None:
                    await asyncio.to_thread(self.ownership_retention.run_if_due)
            except Exception:
                log.exception("pruning A2A task-ownership rows failed")

    async def stop(self, grace_s: float | None = None) -> None:
        for task in (self._sweeper, self._announcer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.frontdoor is not None:
            await self.frontdoor.stop()
        if self.authzen is not None:
            await self.authzen.stop()
        if self.mcp is not None:
            await self.mcp.stop()
        if self.a2a_inbound is not None:
            await self.a2a_inbound.stop()
        if self.a2a_outbound is not None:
            await self.a2a_outbound.stop()
        if self.approvals_server is not None:
            await self.approvals_server.stop(0)
        await self.server.stop(grace_s)
        # gRPC cancels streaming handlers without waiting for them: their calls end here,
        # each with its audit record, before the audit log closes.
        await self.server.service.streams.drain()
        if self.server.service.peers is not None:
            await self.server.service.peers.aclose()
        await self.relay.close()  # after the server: calls in flight have ended
        await self.calls.aclose()
        for engine in (self.engine, self.shadow):
            aclose = getattr(engine, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.models is not None:
            await self.models.close()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.frontdoor is not None:
            self.frontdoor.close()
        if self.mcp is not None:
            self.mcp.close()
        if self.a2a_inbound is not None:
            self.a2a_inbound.close()
        if self.a2a_outbound is not None:
            self.a2a_outbound.close()
        if self.notifier is not None:
            self.notifier.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.reloader is not None:
            self.reloader.stop()
        if self.shadow is not None:
            self.shadow.close()
        self.server.release()
        if self.approvals_server is not None and self.approvals_server.claim is not None:
            self.approvals_server.claim.release()
        self.engine.close()
        self.audit.close()
        if self.state is not None:
            self.state.close()
        if self.identity is not None:
            self.identity.close()
