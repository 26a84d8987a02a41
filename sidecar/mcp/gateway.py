"""The MCP gateway put together: an upstream connection per configured server, the catalog
over them, and the endpoint agents connect to. Built by the sidecar's primary process only
(sessions and stdio servers live in one process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sidecar.calls.decide import Decider
from sidecar.calls.guarded import GuardedPath
from sidecar.calls.relaying import RelayGate
from sidecar.config import Settings
from sidecar.identity import UpstreamCredentials
from sidecar.mcp.calls import McpCalls
from sidecar.mcp.catalog import Catalog
from sidecar.mcp.endpoint import McpEndpoint
from sidecar.mcp.http_upstream import HttpUpstream
from sidecar.mcp.pins import Pin, PinStore
from sidecar.mcp.stdio import StdioUpstream
from sidecar.mcp.upstream import Upstream
from sidecar.relay import HttpRelay
from sidecar.state import StateDb
from sidecar.state.offloop import off_loop

__all__ = ["McpGateway"]

log = logging.getLogger(__name__)


class McpGateway:
    def __init__(
        self,
        settings: Settings,
        path: GuardedPath,
        gate: RelayGate,
        decider: Decider,
        relay: HttpRelay,
        credentials: UpstreamCredentials,
        state: StateDb,
    ) -> None:
        self._settings = settings
        self.pins = PinStore(state)
        upstreams: dict[str, Upstream] = {}
        limit = settings.relay.max_response_bytes  # any one message from an upstream
        for name, server in settings.mcp_servers.items():
            if server.target:
                target = settings.targets[server.target]

                async def headers(target_name: str = server.target) -> dict[str, str]:
                    found = credentials.headers_for(target_name, None, fetch=False)
                    if found is None:  # a JWT-SVID to fetch: in a thread
                        found = await off_loop(credentials.headers_for, target_name, None)
                    return found

                upstreams[name] = HttpUpstream(
                    name,
                    self._notify,
                    relay=relay,
                    target=server.target,
                    url=target.base_url.rstrip("/") + server.path,
                    base_headers=headers,
                    max_message_bytes=limit,
                    timeout_s=server.timeout_s,
                    revision=server.revision,
                )
            else:
                upstreams[name] = StdioUpstream(
                    name, self._notify, settings=server, max_message_bytes=limit
                )
        self.upstreams = upstreams
        self.catalog = Catalog(upstreams, settings.mcp_servers, self.pins)
        # The MCP adapter: the sidecar's one guarded path, gate and decider, on this catalog.
        self.calls = McpCalls(path, gate, decider, self.catalog, settings.mcp_servers)
        self.endpoint = (
            McpEndpoint(settings, self.calls, self.catalog) if settings.mcp.listen else None
        )

    def _notify(self, server: str, method: str, params: dict) -> None:  # type: ignore[type-arg]
        self.catalog.on_notification(server, method, params)

    async def start(self) -> None:
        await asyncio.gather(*(u.start() for u in self.upstreams.values()))
        self.catalog.start()
        if self.endpoint is not None:
            await self.endpoint.start()

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.catalog.close()
        for upstream in self.upstreams.values():
            with contextlib.suppress(Exception):
                await upstream.close()

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()

    async def accept(self, full: str, by: str) -> Pin:
        """Pin ``full``'s current definition (an operator accepted it)."""
        entry = await self.catalog.find("tool", full)
        if entry is None:
            raise LookupError(f"no MCP tool {full!r} is listed by its server now")
        pin = await off_loop(self.pins.accept, full, entry.hash, by)
        await self.catalog.accepted(full)
        return pin
