"""What stands between an allowed call and its upstream: the concurrency slots (a slow
upstream holds at most ``relay.per_target`` of them, all upstreams at most
``relay.max_concurrency``) and the credential the sidecar injects, scrubbed from the answer.

One :class:`RelayGate` per sidecar, shared by the adapters that relay (tools, models, MCP):
the slots bound them together, so no kind of call can starve another past its share.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

from sidecar.calls.common import off_loop
from sidecar.identity import UpstreamCredentials
from sidecar.policy.decision import CredentialObligation
from sidecar.relay.scrub import Scrubber
from sidecar.users import TokenExchanger, User

__all__ = ["RelayGate", "Slots"]


class Slots:
    """One slot of the target, then one of the whole relay (``async with``); released in
    reverse order, the target's also when waiting for the relay's is cancelled."""

    __slots__ = ("_all", "_target")

    def __init__(self, target: asyncio.Semaphore, every: asyncio.Semaphore) -> None:
        self._target = target
        self._all = every

    async def __aenter__(self) -> None:
        await self._target.acquire()
        try:
            await self._all.acquire()
        except BaseException:
            self._target.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._all.release()
        self._target.release()


class RelayGate:
    """Slots and credentials for every relay of this sidecar."""

    def __init__(
        self,
        *,
        exchange_targets: frozenset[str],
        credentials: UpstreamCredentials,
        exchanger: TokenExchanger,
        max_concurrency: int,
        per_target: int,
    ) -> None:
        self._exchange_targets = exchange_targets  # auth.type token-exchange
        self._credentials = credentials
        self._exchanger = exchanger
        every = asyncio.Semaphore(max_concurrency)
        # Per target (and provider, and MCP server): keyed by name, made on first use.
        self._slots: dict[str, Slots] = collections.defaultdict(
            lambda: Slots(asyncio.Semaphore(per_target), every)
        )

    def slots(self, key: str) -> Slots:
        """The slots a relay to ``key`` (a target, a provider, ``mcp:SERVER``) holds."""
        return self._slots[key]

    async def credential_headers(
        self,
        target: str,
        credential: CredentialObligation | None,
        task_id: str,
        scrubber: Scrubber,
        user: User | None,
    ) -> dict[str, str]:
        """The headers carrying the sidecar's credential for ``target`` on this call (the
        policy's credential obligation applied); each value is scrubbed from the answer."""
        if user is not None:
            scrubber.add(user.token)  # never echoed back, should an upstream ever hold it
        if target in self._exchange_targets:
            injected = await self._exchanger.headers(target, credential, user, task_id)
        else:
            injected = self._credentials.headers_for(
                target, credential, task_id=task_id, fetch=False
            )
        if injected is None:  # fetching a JWT-SVID may wait on the Workload API: in a thread
            injected = await off_loop(
                self._credentials.headers_for, target, credential, task_id=task_id
            )
        for value in injected.values():
            scrubber.add(value.removeprefix("Bearer "))  # never echoed back to the agent
        return injected

    async def aclose(self) -> None:
        """Close the sessions to authorization servers (token exchange)."""
        await self._exchanger.aclose()
