"""Building the sidecar's single components from settings (engine, identity, attestor, audit):
each one alone, so the CLI and the console can build one without the whole sidecar."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sidecar.approvals import Approval
from sidecar.approvals.model import audit_record
from sidecar.audit import AuditLog, FileKeySigner, HttpSink, SvidSigner
from sidecar.config import ConfigError, Settings
from sidecar.identity import (
    Attestor,
    IdentityError,
    JwtAttestor,
    MtlsAttestor,
    PodAttestor,
    StaticAttestor,
    WorkloadIdentity,
)
from sidecar.identity.credentials import mtls_context
from sidecar.policy import EmbeddedEngine, PolicyEngine
from sidecar.workers import WorkerRole, segment_path

if TYPE_CHECKING:  # imported when configured: the OPA client (urllib3) and the bundle engine
    from sidecar.policy.bundle.engine import BundleEngine

__all__ = [
    "approval_auditor",
    "build_attestor",
    "build_audit",
    "build_bundle_engine",
    "build_engine",
    "build_identity",
    "build_shadow",
    "start_bundles",
    "svid_expiry",
    "workload_api_socket",
]

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> PolicyEngine:
    policy = settings.policy
    if policy.engine == "opa":
        from sidecar.policy.opa import OpaEngine

        return OpaEngine(policy.opa_url, policy.query, workers=policy.pool_size)
    if policy.bundle is not None:
        return build_bundle_engine(settings)
    return EmbeddedEngine.from_dir(
        policy.dir,
        policy.query,
        workers=policy.pool_size,
        inline_max_ms=policy.inline_max_ms,
        memo_size=policy.memo_size,
        vetting=policy.vetting,
    )


def build_bundle_engine(settings: Settings) -> BundleEngine:
    """The embedded engine fed by ``policy.bundle``: the fallback directory (if set) serves
    first, then the persisted bundle (if good); the poller starts with the sidecar
    (:func:`start_bundles`). Until a revision is active, the engine is not healthy."""
    from sidecar.policy.bundle.engine import BundleEngine
    from sidecar.policy.bundle.runtime import BundleRuntime
    from sidecar.policy.source import load_policy_dir

    policy = settings.policy
    bundle = policy.bundle
    assert bundle is not None
    engine = BundleEngine(
        policy.query,
        workers=policy.pool_size,
        inline_max_ms=policy.inline_max_ms,
        memo_size=policy.memo_size,
        vetting=policy.vetting,
        fallback=load_policy_dir(bundle.fallback_dir) if bundle.fallback_dir else None,
    )
    BundleRuntime(bundle, engine, saves=WorkerRole.from_env().primary).restore()
    return engine


def start_bundles(engine: PolicyEngine, identity: WorkloadIdentity | None) -> None:
    """Start polling the bundle server (a no-op for other engines); with ``svid: true`` the
    sidecar's X.509-SVID is the client certificate, the trust bundle (or ``tls.ca_cert``) the
    roots."""
    runtime = getattr(engine, "bundles", None)  # only a BundleEngine has them
    if runtime is None:
        return
    ca_cert = runtime.settings.service.tls.ca_cert

    def svid_context() -> ssl.SSLContext:
        if identity is None:
            raise IdentityError("no Workload API connection for the bundle service's SVID")
        context = mtls_context(identity.snapshot())
        if ca_cert is not None:
            context.load_verify_locations(cafile=str(ca_cert))
        return context

    runtime.start(svid_context=svid_context)


def build_shadow(settings: Settings) -> PolicyEngine | None:
    """The shadow policy (config only: no request can enable or influence it)."""
    policy = settings.policy
    if policy.shadow is None:
        return None
    return EmbeddedEngine.from_dir(
        policy.shadow,
        policy.query,
        workers=policy.pool_size,
        inline_max_ms=policy.inline_max_ms,
        memo_size=policy.memo_size,
        vetting=policy.vetting,
    )


def workload_api_socket(settings: Settings) -> str:
    socket = settings.identity.socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET", "")
    if not socket:
        raise ConfigError(
            "identity.socket: not set, and SPIFFE_ENDPOINT_SOCKET is empty; the sidecar needs "
            "the SPIFFE Workload API socket (e.g. unix:///run/spire/sockets/agent.sock)"
        )
    return socket


def build_identity(settings: Settings) -> WorkloadIdentity | None:
    """The Workload API connection, when identity or any upstream credential needs it."""
    needed = (
        settings.identity.mode != "static"
        or any(t.auth.type not in ("none", "bearer") for t in settings.targets.values())
        or not settings.approvals_listen.startswith("unix:")
        or (settings.policy.bundle is not None and settings.policy.bundle.service.credentials.svid)
    )
    if not needed:
        return None
    return WorkloadIdentity(
        workload_api_socket(settings), refresh_margin_s=settings.identity.jwt_refresh_margin_s
    )


def build_attestor(settings: Settings, identity: WorkloadIdentity | None) -> Attestor:
    mode = settings.identity
    if mode.mode == "static":
        return StaticAttestor(mode.spiffe_id)
    assert identity is not None
    if mode.mode == "pod":
        return PodAttestor(identity)
    if mode.mode == "jwt":
        return JwtAttestor(identity, mode.audience, mode.trust_domains)
    return MtlsAttestor(identity, mode.trust_domains)


def build_audit(
    settings: Settings, identity: WorkloadIdentity | None, role: WorkerRole | None = None
) -> AuditLog:
    """The audit log (this worker's segment of it); checkpoints are signed with the SVID, or
    a development key file."""
    audit = settings.audit
    index = role.index if role is not None else 0
    path = segment_path(audit.path, index)
    if identity is not None and audit.signing_key is None:
        signer = SvidSigner(identity.snapshot)
    else:
        signer = FileKeySigner(audit.signing_key or audit.path.parent / "audit-signing.key")
    http = None
    if audit.http_url:
        http = HttpSink(
            audit.http_url,
            batch=audit.http_batch,
            interval_s=audit.http_interval_s,
            query=settings.policy.query,
        )
    return AuditLog(
        path,
        mode=audit.mode,
        fsync=audit.fsync,
        signer=signer,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval_s=audit.checkpoint_interval_s,
        checkpoints_path=segment_path(audit.checkpoints_path, index)
        if audit.checkpoints_path
        else path.with_name(path.name + ".checkpoints"),
        max_bytes=audit.max_bytes,
        keep_files=audit.keep_files,
        buffer=audit.buffer,
        stdout=audit.stdout,
        http=http,
    )


def svid_expiry(identity: WorkloadIdentity | None) -> float | None:
    if identity is None:
        return None
    try:
        return identity.snapshot().expires_at
    except IdentityError:
        return None


def approval_auditor(audit: AuditLog) -> Any:
    """Writes an approval audit record (an approver's decision or refusal, an end)."""

    def write(
        event: str, approval: Approval | None, detail: Mapping[str, Any], approval_id: str = ""
    ) -> None:
        audit.write(audit_record(event, approval, detail, approval_id=approval_id))

    return write
