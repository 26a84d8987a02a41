"""Token exchange (RFC 8693): the user's token becomes a credential for one upstream.

For a target with ``auth.type: token-exchange`` the sidecar POSTs to the authorization
server's ``token_endpoint``:

* ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``, the user's token as
  ``subject_token`` (of ``subject_token_type``), the ``audience`` and ``resource`` (RFC 8707)
  of the target, and the scopes policy's ``credential`` obligation chose (else the target's);
* client authentication with the sidecar's JWT-SVID as the client assertion (RFC 7523; type
  ``jwt-spiffe`` per the OAuth SPIFFE Client Authentication draft, or ``jwt-bearer``) for the
  server's audience, and ``client_id`` = the sidecar's SPIFFE ID;
* when policy asks for it (``credential.actor_token``), the JWT-SVID again as ``actor_token``,
  so the issued token's ``act`` claim names the agent.

The issued token is cached per task, user, target, audience and scopes until shortly before
it expires, and dropped when the task ends. Whatever goes wrong (no user token, the server
refuses, unreachable, an answer without a token, a token outliving the obligation's
``ttl_s``) is ``credential_unavailable``: nothing is relayed. No token ever appears in an
error or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt

from sidecar.identity.errors import IdentityError
from sidecar.identity.workload import WorkloadIdentity
from sidecar.policy.decision import CredentialObligation
from sidecar.relay.settings import TargetAuthSettings, TargetSettings
from sidecar.users.user import User

__all__ = ["GRANT_TYPE", "TokenExchanger"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
_TOKEN_TYPES = {
    "access_token": "urn:ietf:params:oauth:token-type:access_token",
    "id_token": "urn:ietf:params:oauth:token-type:id_token",
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
}
_ASSERTION_TYPES = {
    "jwt-spiffe": "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe",
    "jwt-bearer": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
}
_MAX_ANSWER_BYTES = 256 * 1024
log = logging.getLogger(__name__)


def _unavailable(message: str) -> IdentityError:
    return IdentityError(message, code="credential_unavailable")


class TokenExchanger:
    """Exchanges user tokens for upstream tokens; caches them per task."""

    def __init__(
        self,
        targets: Mapping[str, TargetSettings],
        identity: WorkloadIdentity | None,
        *,
        refresh_margin_s: float = 30.0,
    ) -> None:
        self._targets = targets
        self._identity = identity
        self._margin = refresh_margin_s
        # (task, iss, sub, target, audience, scopes, actor) -> (token, expires_at)
        self._cache: dict[tuple[str, ...], tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.exchanges = 0  # requests sent to authorization servers (for tests and metrics)

    async def headers(
        self,
        target: str,
        obligation: CredentialObligation | None,
        user: User | None,
        task_id: str,
    ) -> dict[str, str]:
        auth = self._targets[target].auth
        if user is None:
            raise _unavailable(
                f"target {target!r} uses token exchange: the call needs the user's token "
                "(users.header), and none was sent"
            )
        audience = obligation.audience if obligation is not None else auth.audience
        scopes = obligation.scopes if obligation and obligation.scopes else auth.scopes
        actor = bool(obligation and obligation.actor_token)
        key = (task_id, user.iss, user.sub, target, audience, " ".join(scopes), str(actor))
        cached = self._cache.get(key)
        now = time.time()
        if cached is not None and cached[1] - now > self._margin:
            token, expires_at = cached
        else:
            token, expires_at = await self._exchange(auth, user, audience, scopes, actor, task_id)
            self._cache[key] = (token, expires_at)
        if obligation is not None and expires_at - now > obligation.ttl_s:
            raise _unavailable(
                f"the exchanged token for {target!r} is valid for {int(expires_at - now)}s, "
                f"longer than the {obligation.ttl_s}s policy allows"
            )
        return {"Authorization": f"Bearer {token}"}

    def revoke_task(self, task_id: str) -> int:
        """Forget every token exchanged under ``task_id``: no later call reuses one."""
        if not task_id:
            return 0
        gone = [key for key in self._cache if key[0] == task_id]
        for key in gone:
            del self._cache[key]
        return len(gone)

    async def _exchange(
        self,
        auth: TargetAuthSettings,
        user: User,
        audience: str,
        scopes: tuple[str, ...],
        actor: bool,
        task_id: str,
    ) -> tuple[str, float]:
        if self._identity is None:
            raise _unavailable("token exchange needs the Workload API (the client assertion)")
        assertion_audience = auth.assertion_audience or auth.token_endpoint
        try:
            assertion, _ = await asyncio.to_thread(
                self._identity.jwt_svid, assertion_audience, scope=task_id
            )
            client_id = self._identity.snapshot().spiffe_id
        except IdentityError as exc:
            raise _unavailable(f"no JWT-SVID for the client assertion: {exc}") from exc
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": user.token,
            "subject_token_type": _TOKEN_TYPES[auth.subject_token_type],
            "requested_token_type": _TOKEN_TYPES["access_token"],
            "client_id": client_id,
            "client_assertion_type": _ASSERTION_TYPES[auth.assertion_type],
            "client_assertion": assertion,
        }
        if audience:
            form["audience"] = audience
        if auth.resource:
            form["resource"] = auth.resource
        if scopes:
            form["scope"] = " ".join(scopes)
        if actor:
            form["actor_token"] = assertion
            form["actor_token_type"] = _TOKEN_TYPES["jwt"]
        secrets = [form["subject_token"], assertion]
        answer = await self._post(auth, form, secrets)
        self.exchanges += 1
        token = answer.get("access_token")
        token_type = str(answer.get("token_type", "")).lower()
        if not isinstance(token, str) or not token or token_type not in ("bearer", "n_a"):
            raise _unavailable("the authorization server's answer has no bearer access_token")
        return token, _expires_at(answer, token)

    async def _post(
        self, auth: TargetAuthSettings, form: dict[str, str], secrets: list[str]
    ) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        context: ssl.SSLContext | bool = True
        if auth.ca_file is not None:
            context = ssl.create_default_context(cafile=str(auth.ca_file))
        try:
            async with self._session.post(
                auth.token_endpoint,
                data=form,
                ssl=context,
                timeout=aiohttp.ClientTimeout(total=auth.timeout_s),
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                body = await response.content.read(_MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise _unavailable(
                f"the authorization server cannot be reached: {type(exc).__name__}"
            ) from exc
        try:
            answer = json.loads(body) if len(body) <= _MAX_ANSWER_BYTES else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _unavailable(f"the authorization server answered HTTP {status}, not JSON")
        if status != 200:
            error = answer.get("error") if isinstance(answer.get("error"), str) else "unknown"
            described = answer.get("error_description")
            detail = ""
            if isinstance(described, str):
                for secret in secrets:  # a server that quotes a token back must not leak it
                    described = described.replace(secret, "[REDACTED:credential]")
                detail = f": {described[:200]}"
            raise _unavailable(
                f"the authorization server refused the exchange (HTTP {status}, {error}{detail})"
            )
        return answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _expires_at(answer: Mapping[str, Any], token: str) -> float:
    """From ``expires_in``; else the token's own ``exp`` if it is a JWT; else now (so it is
    used for this call only, never cached)."""
    now = time.time()
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return now + float(expires_in)
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return now
    return float(exp) if isinstance(exp, int | float) else now
