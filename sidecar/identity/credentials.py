"""Just-in-time upstream credentials: what the sidecar adds to a relayed call, never the agent.

Per target (``targets.NAME.auth``): ``jwt-svid`` sends ``Authorization: Bearer <JWT-SVID>``
fetched from the Workload API for the target's audience, or ``none``. A decision's
``credential`` obligation ``{audience, ttl_s}`` narrows this: the JWT-SVID is requested for the
obligation's audience, and a token that would outlive ``ttl_s`` is not used, so the call is
refused (``credential_unavailable``) rather than relayed with more than policy allowed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from sidecar.config import TargetSettings
from sidecar.identity.errors import IdentityError
from sidecar.identity.workload import WorkloadIdentity
from sidecar.policy.decision import CredentialObligation

__all__ = ["UpstreamCredentials"]


class UpstreamCredentials:
    def __init__(
        self, targets: Mapping[str, TargetSettings], identity: WorkloadIdentity | None
    ) -> None:
        self._targets = targets
        self._identity = identity

    def headers_for(self, target: str, obligation: CredentialObligation | None) -> dict[str, str]:
        """Headers carrying the credential for one call (blocking: may ask the Workload API)."""
        auth = self._targets[target].auth
        if obligation is None and auth.type == "none":
            return {}
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
        token, expires_at = self._identity.jwt_svid(audience)
        if obligation is not None and expires_at - time.time() > obligation.ttl_s:
            raise IdentityError(
                f"the Workload API's JWT-SVID for {audience!r} is valid for "
                f"{int(expires_at - time.time())}s, longer than the {obligation.ttl_s}s policy "
                "allows",
                code="credential_unavailable",
            )
        return {"Authorization": f"Bearer {token}"}
