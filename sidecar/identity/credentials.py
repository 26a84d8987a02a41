"""Just-in-time upstream credentials: what the sidecar adds to a relayed call, never the agent.

Per target (``targets.NAME.auth``): ``jwt-svid`` sends ``Authorization: Bearer <JWT-SVID>``
fetched from the Workload API for the target's audience; ``mtls`` presents the sidecar's
X.509-SVID as the TLS client certificate and verifies the upstream against the SPIFFE trust
bundle (chain and DNS name), re-reading both after every rotation; ``bearer`` sends the
token read from ``token_file`` (re-read when the file changes); ``none`` adds nothing.

A decision's ``credential`` obligation ``{audience, ttl_s}`` narrows this: the JWT-SVID is
requested for the obligation's audience, and a token that would outlive ``ttl_s`` is not
used, so the call is
refused (``credential_unavailable``) rather than relayed with more than policy allowed.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Mapping

from sidecar.identity.errors import IdentityError
from sidecar.identity.workload import Snapshot, WorkloadIdentity
from sidecar.policy.decision import CredentialObligation
from sidecar.relay.errors import ProviderKeyUnavailable
from sidecar.relay.http import HttpRelay
from sidecar.relay.models import ProviderKey
from sidecar.relay.settings import TargetSettings

__all__ = ["UpstreamCredentials", "load_svid", "mtls_context", "server_context", "wire_mtls"]


class UpstreamCredentials:
    def __init__(
        self, targets: Mapping[str, TargetSettings], identity: WorkloadIdentity | None
    ) -> None:
        self._targets = targets
        self._identity = identity
        self._tokens = {
            name: ProviderKey(t.auth.token_file)
            for name, t in targets.items()
            if t.auth.type == "bearer"
        }

    def headers_for(
        self,
        target: str,
        obligation: CredentialObligation | None,
        *,
        task_id: str = "",
        fetch: bool = True,
    ) -> dict[str, str] | None:
        """Headers carrying the credential for one call. JWT-SVIDs are cached per task, so
        that :meth:`revoke_task` can drop them. Blocking when it must ask the Workload API;
        with ``fetch=False`` it returns None instead (call again off the event loop)."""
        auth = self._targets[target].auth
        if obligation is None and auth.type == "mtls":
            if self._identity is None:
                raise IdentityError("no Workload API for mTLS", code="credential_unavailable")
            self._identity.snapshot()  # no current SVID: refuse rather than connect without
            return {}
        if obligation is None and auth.type == "none":
            return {}
        if obligation is None and auth.type == "bearer":
            try:
                return {"Authorization": f"Bearer {self._tokens[target].get()}"}
            except ProviderKeyUnavailable as exc:
                raise IdentityError(str(exc), code="credential_unavailable") from None
        if auth.type != "jwt-svid":
            raise IdentityError(
                f"policy requires a credential for audience {obligation.audience!r}, but "  # type: ignore[union-attr]
                f"target {target!r} has no credential configured (targets.{target}.auth)",
                code="credential_unavailable",
            )
        if self._identity is None:
            raise IdentityError(
                "no Workload API is configured to mint upstream credentials",
                code="credential_unavailable",
            )
        audience = obligation.audience if obligation is not None else auth.audience
        if fetch:
            token, expires_at = self._identity.jwt_svid(audience, scope=task_id)
        else:
            cached = self._identity.cached_jwt_svid(audience, scope=task_id)
            if cached is None:
                return None
            token, expires_at = cached
        if obligation is not None and expires_at - time.time() > obligation.ttl_s:
            raise IdentityError(
                f"the Workload API's JWT-SVID for {audience!r} is valid for "
                f"{int(expires_at - time.time())}s, longer than the {obligation.ttl_s}s policy "
                "allows",
                code="credential_unavailable",
            )
        return {"Authorization": f"Bearer {token}"}

    def revoke_task(self, task_id: str) -> int:
        """Forget every credential cached for ``task_id``: no later call reuses one. (A JWT-SVID
        already sent stays valid upstream until it expires: its short TTL bounds that.)"""
        if self._identity is None or not task_id:
            return 0
        return self._identity.forget_tokens(task_id)


def mtls_context(snapshot: Snapshot) -> ssl.SSLContext:
    """A client SSLContext: our SVID as client certificate, the trust bundle as roots.

    ``ssl`` loads keys only from files, so the key goes through an anonymous in-memory file
    (memfd) that never touches a filesystem and is closed at once.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=snapshot.bundle_pem().decode("ascii"))
    load_svid(context, snapshot)
    return context


def server_context(snapshot: Snapshot) -> ssl.SSLContext:
    """A server SSLContext: our SVID, and client certificates required, verified against the
    trust bundle (the caller's SPIFFE ID is then read from its URI SAN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=snapshot.bundle_pem().decode("ascii"))
    load_svid(context, snapshot)
    return context


def load_svid(context: ssl.SSLContext, snapshot: Snapshot) -> None:
    """Load the SVID into ``context`` (again, after a rotation: later handshakes use it)."""
    fd = os.memfd_create("svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, snapshot.chain_pem() + snapshot.key_pem())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def wire_mtls(relay: HttpRelay, targets: Mapping[str, TargetSettings], identity: WorkloadIdentity):
    """Give every ``auth: mtls`` target a TLS context now and after every rotation."""
    names = [name for name, t in targets.items() if t.auth.type == "mtls"]
    if not names:
        return
    refuse_all = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no roots: every handshake fails
    for name in names:
        relay.use_tls(name, refuse_all)

    def apply(snapshot: Snapshot) -> None:
        context = mtls_context(snapshot)
        for name in names:
            relay.use_tls(name, context)

    identity.subscribe(apply)
    # A snapshot taken before we subscribed was not given to ``apply``: the stream sets the
    # snapshot before it reads the listeners, so one of the two always sees it.
    try:
        snapshot = identity.snapshot()
    except IdentityError:
        return
    apply(snapshot)
