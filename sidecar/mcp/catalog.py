"""What the upstream MCP servers offer, aggregated under ``SERVER.`` (tools and prompts by
name, resources by URI: ``SERVER.`` + the upstream's URI), and each tool's definition checked
against its pin.

A list is cached per upstream until it signals a change or ``refresh_s`` has passed, whichever
comes first: an upstream that changes a definition without saying so is caught by the next
read (a list older than ``refresh_s`` is read again before it is used, and a refresher reads
every server's tools that often, telling agents when a definition changed).

Everything here comes from upstreams and is untrusted: entries that are not well-formed are
dropped (and logged), lists are bounded, annotations are carried only as hints for policy, and
the secrets the sidecar handed the upstream are scrubbed from what it lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import mcp_types
from mcp_types.jsonrpc import METHOD_NOT_FOUND
from pydantic import ValidationError

from sidecar.mcp.entry import Entry, split_name
from sidecar.mcp.errors import UpstreamMcpUnavailable, UpstreamRpcError
from sidecar.mcp.pins import PinStore, definition_hash
from sidecar.mcp.settings import McpServerSettings
from sidecar.mcp.upstream import Upstream
from sidecar.relay.scrub import Scrubber
from sidecar.state.offloop import off_loop

__all__ = ["KINDS", "Catalog", "Entry", "Kind", "split_name"]

log = logging.getLogger(__name__)

Kind = Literal["tool", "prompt", "resource", "template"]
# The official schema of each kind (mcp-types): an upstream's entry that does not validate
# is never shown to an agent.
_MODELS: dict[str, Any] = {
    "tool": mcp_types.Tool,
    "prompt": mcp_types.Prompt,
    "resource": mcp_types.Resource,
    "template": mcp_types.ResourceTemplate,
}
# kind -> (list method, the result's list key, the item's name key)
KINDS: dict[str, tuple[str, str, str]] = {
    "tool": ("tools/list", "tools", "name"),
    "prompt": ("prompts/list", "prompts", "name"),
    "resource": ("resources/list", "resources", "uri"),
    "template": ("resources/templates/list", "resourceTemplates", "uriTemplate"),
}
# An upstream notification -> the kinds it makes stale, and what the agent is told.
CHANGES: dict[str, tuple[tuple[str, ...], str]] = {
    "notifications/tools/list_changed": (("tool",), "notifications/tools/list_changed"),
    "notifications/prompts/list_changed": (("prompt",), "notifications/prompts/list_changed"),
    "notifications/resources/list_changed": (
        ("resource", "template"),
        "notifications/resources/list_changed",
    ),
}
_ANNOUNCED = {
    "tool": "notifications/tools/list_changed",
    "prompt": "notifications/prompts/list_changed",
    "resource": "notifications/resources/list_changed",
    "template": "notifications/resources/list_changed",
}
_MAX_PAGES = 50
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,512}$")


@dataclass
class _Cached:
    generation: int = 0
    entries: list[Entry] | None = None
    fetched: float = 0.0  # time.monotonic() when the read that gave ``entries`` began
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Catalog:
    """The aggregated lists, fetched on first use and again after a change."""

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        servers: Mapping[str, McpServerSettings],
        pins: PinStore,
    ) -> None:
        self.upstreams = upstreams
        self._servers = servers
        self._pins = pins
        self._cache: dict[tuple[str, str], _Cached] = {
            (server, kind): _Cached() for server in upstreams for kind in KINDS
        }
        self._listeners: set[Callable[[str], None]] = set()
        self._refreshers: list[asyncio.Task[None]] = []

    # --- refreshing -----------------------------------------------------------------------

    def start(self) -> None:
        """Read each server's tools every ``refresh_s`` (a change is announced)."""
        for server in self.upstreams:
            self._refreshers.append(asyncio.create_task(self._refresh_loop(server)))

    async def close(self) -> None:
        for task in self._refreshers:
            task.cancel()
        for task in self._refreshers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._refreshers.clear()

    async def _refresh_loop(self, server: str) -> None:
        interval = self._servers[server].refresh_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(server, "tool")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # it cannot list now: its calls fail on their own
                log.info(
                    "MCP server could not be re-read",
                    extra={"server": server, "error": type(exc).__name__},
                )

    async def refresh(self, server: str, kind: str) -> bool:
        """Read ``server``'s ``kind`` again now; True (and agents are told) when what it
        lists differs from what was cached."""
        cached = self._cache[(server, kind)]
        async with cached.lock:
            before = cached.entries
            entries = await self._store(server, kind, cached)
        changed = before is not None and _shape(before) != _shape(entries)
        if changed:
            log.warning(
                "MCP server changed its list without notifying",
                extra={"server": server, "kind": kind},
            )
            self._announce(_ANNOUNCED[kind])
        return changed

    # --- changes --------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """``listener(method)`` for each list change the agent should hear of."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def on_notification(self, server: str, method: str, params: dict[str, Any]) -> None:
        """From an upstream: a list change makes its lists stale and reaches the agents;
        anything else an upstream announces is not relayed."""
        change = CHANGES.get(method)
        if change is None:
            return
        kinds, announced = change
        for kind in kinds:
            self.invalidate(server, kind)
        self._announce(announced)

    def invalidate(self, server: str, kind: str) -> None:
        cached = self._cache.get((server, kind))
        if cached is not None:
            cached.generation += 1
            cached.entries = None

    def _announce(self, method: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(method)
            except Exception:
                log.exception("an MCP list-change listener failed")

    async def accepted(self, full: str) -> None:
        """An operator accepted a definition: the lists show it as pinned from now on."""
        server, _ = split_name(full)
        self.invalidate(server, "tool")
        self._announce("notifications/tools/list_changed")

    # --- reading --------------------------------------------------------------------------

    async def entries(self, kind: str) -> list[Entry]:
        """Every server's entries of ``kind``; a server that cannot answer contributes none
        (it is logged, and its calls fail on their own)."""
        results = await asyncio.gather(
            *(self.server_entries(server, kind) for server in self.upstreams),
            return_exceptions=True,
        )
        out: list[Entry] = []
        for server, got in zip(self.upstreams, results, strict=True):
            if isinstance(got, BaseException):
                log.warning(
                    "MCP server did not list",
                    extra={"server": server, "kind": kind, "error": str(got)[:200]},
                )
                continue
            out.extend(got)
        return out

    async def find(self, kind: str, full: str) -> Entry | None:
        server, name = split_name(full)
        if server not in self.upstreams:
            return None
        for entry in await self.server_entries(server, kind):
            if entry.name == name:
                return entry
        return None

    async def server_entries(self, server: str, kind: str) -> list[Entry]:
        """The cached list while it is fresh (younger than ``refresh_s``, no change signalled
        since), else read again first."""
        cached = self._cache[(server, kind)]
        if self._fresh(server, cached):
            assert cached.entries is not None
            return cached.entries
        async with cached.lock:
            if self._fresh(server, cached):
                assert cached.entries is not None
                return cached.entries
            before = cached.entries
            entries = await self._store(server, kind, cached)
        if before is not None and _shape(before) != _shape(entries):
            self._announce(_ANNOUNCED[kind])  # it changed without notifying
        return entries

    def _fresh(self, server: str, cached: _Cached) -> bool:
        age = time.monotonic() - cached.fetched
        return cached.entries is not None and age < self._servers[server].refresh_s

    async def _store(self, server: str, kind: str, cached: _Cached) -> list[Entry]:
        """Read and cache (under ``cached.lock``), unless made stale while it was read."""
        generation = cached.generation
        started = time.monotonic()
        entries = await self._fetch(server, kind)
        if cached.generation == generation:
            cached.entries, cached.fetched = entries, started
        return entries

    async def _fetch(self, server: str, kind: str) -> list[Entry]:
        method, key, name_key = KINDS[kind]
        settings = self._servers[server]
        upstream = self.upstreams[server]
        items: list[Any] = []
        cursor: str | None = None
        scrubber = Scrubber(upstream.secrets)
        for _ in range(_MAX_PAGES):
            params = {"cursor": cursor} if cursor else None
            try:
                page = await upstream.request(method, params, timeout_s=settings.timeout_s)
            except UpstreamRpcError as exc:
                if exc.code == METHOD_NOT_FOUND:  # it offers none of these
                    return []
                raise UpstreamRpcError(
                    exc.code, scrubber.text(str(exc)), scrubber.value(exc.data)
                ) from None
            page = scrubber.value(page)
            got = page.get(key)
            if not isinstance(got, list):
                raise UpstreamMcpUnavailable(
                    f"{method} from {server!r} has no {key} list",
                    code="upstream_bad_response",
                    reached=True,
                )
            items.extend(got)
            cursor = page.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or len(items) >= settings.max_tools:
                break
        entries = []
        seen: set[str] = set()
        for item in items[: settings.max_tools]:
            name = item.get(name_key) if isinstance(item, dict) else None
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in seen:
                log.warning("MCP server listed a malformed entry", extra={"server": server})
                continue
            try:
                _MODELS[kind].model_validate(item)
            except ValidationError as exc:
                log.warning(
                    "MCP server listed an entry that is not valid MCP",
                    extra={"server": server, "entry": name[:100], "errors": exc.error_count()},
                )
                continue
            seen.add(name)
            entries.append(self._entry(server, kind, name, name_key, item, settings))
        if kind == "tool":
            entries = await self._pinned(entries)
        return entries

    @staticmethod
    def _entry(
        server: str,
        kind: str,
        name: str,
        name_key: str,
        item: dict[str, Any],
        settings: McpServerSettings,
    ) -> Entry:
        full = f"{server}.{name}"
        annotations = item.get("annotations")
        operation = "read"
        if kind == "tool":
            tool = settings.tools.get(name)
            operation = tool.operation if tool is not None else "act"
        return Entry(
            kind=kind,
            server=server,
            name=name,
            full=full,
            body=item | {name_key: full},
            operation=operation,
            annotations=annotations if isinstance(annotations, dict) else {},
            hash=definition_hash(item) if kind == "tool" else "",
        )

    async def _pinned(self, entries: list[Entry]) -> list[Entry]:
        pins = await off_loop(self._pins.pin_new, {e.full: e.hash for e in entries})
        return [
            dataclasses.replace(e, pinned_hash=pins[e.full].hash) if e.full in pins else e
            for e in entries
        ]


def _shape(entries: list[Entry]) -> dict[str, tuple[str, str]]:
    """What a list says, to tell a change: each entry's definition hash (tools) or body."""
    return {e.full: (e.hash or repr(sorted(e.body.items())), e.pinned_hash) for e in entries}
