"""What the sidecar could be asked about: the configured catalog the AuthZEN search APIs and
``agent-sidecar explain`` evaluate policy over. Pure: the caller reads the pins and the policy
data (blocking I/O) and hands them in.

Resources, by AuthZEN ``resource.type``:

* ``tool``: ``tools.NAME`` of the configuration (target and operation from there);
* ``model``: ``models.ALIAS`` (its provider and operation);
* ``mcp_tool``: the MCP servers' *pinned* tools (``SERVER.tool``, from the state store's pins:
  a tool is pinned when the sidecar first lists it). Evaluated as a ``tools/call`` of the
  pinned definition, without annotations: a search never reaches an MCP server;
* A2A peers' pinned skills: there are no A2A peers in this build. :meth:`Catalog.peers` is
  where they go; it returns none.

Subjects: the SPIFFE IDs the policy's data documents name (as keys or values), since the
sidecar keeps no directory of agents; the grants of a policy live there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import Settings
from sidecar.identity.errors import InvalidSpiffeIdError
from sidecar.identity.subject import parse_spiffe_id
from sidecar.mcp.entry import split_name

__all__ = ["RESOURCE_TYPES", "Catalog", "CatalogEntry", "subjects_in"]

RESOURCE_TYPES = ("tool", "model", "mcp_tool")
_MAX_SUBJECTS = 10_000  # a data document naming more is cut here (and the search says so)


@dataclass(frozen=True)
class CatalogEntry:
    """One resource as policy sees it: its target and operation come from configuration."""

    type: str
    id: str
    target: str
    operation: str
    pinned_hash: str = ""  # mcp_tool only
    # model only: the API asked about, the alias's first (chat for an openai-format alias)
    api: str = ""


@dataclass(frozen=True)
class Catalog:
    """The configured resources at one moment (``pins``: ``SERVER.tool`` -> pinned hash)."""

    settings: Settings
    pins: Mapping[str, str]

    def entries(self, kind: str) -> list[CatalogEntry]:
        """Every resource of ``kind``, sorted by id (the order pages follow)."""
        if kind == "tool":
            found = [
                CatalogEntry("tool", name, tool.target, tool.operation)
                for name, tool in self.settings.tools.items()
            ]
        elif kind == "model":
            found = [self._model_entry(alias) for alias in self.settings.models]
        elif kind == "mcp_tool":
            found = [e for e in map(self._mcp_entry, self.pins) if e is not None]
        else:
            return []
        return sorted(found, key=lambda e: e.id)

    def _model_entry(self, alias: str) -> CatalogEntry:
        model = self.settings.models[alias]
        apis = model.apis_for(self.settings.providers[model.provider].type)
        return CatalogEntry("model", alias, model.provider, model.operation, api=apis[0])

    def find(self, kind: str, ident: str) -> CatalogEntry | None:
        if kind == "tool" and ident in self.settings.tools:
            tool = self.settings.tools[ident]
            return CatalogEntry("tool", ident, tool.target, tool.operation)
        if kind == "model" and ident in self.settings.models:
            return self._model_entry(ident)
        if kind == "mcp_tool" and ident in self.pins:
            return self._mcp_entry(ident)
        return None

    def peers(self) -> list[CatalogEntry]:
        """A2A peers' pinned skills: this build has no A2A peers, so none."""
        return []

    def _mcp_entry(self, full: str) -> CatalogEntry | None:
        server, name = split_name(full)
        settings = self.settings.mcp_servers.get(server)
        if settings is None:  # pinned by a server no longer configured: not callable
            return None
        tool = settings.tools.get(name)
        operation = tool.operation if tool is not None else "act"  # as the MCP catalog does
        return CatalogEntry("mcp_tool", full, server, operation, self.pins[full])


def subjects_in(data: Any) -> list[str]:
    """The SPIFFE IDs a policy's data names, as keys or string values, sorted."""
    found: set[str] = set()
    for text in _strings(data, depth=0):
        if len(found) >= _MAX_SUBJECTS:
            break
        if text.startswith("spiffe://"):
            try:
                found.add(parse_spiffe_id(text)[0])
            except InvalidSpiffeIdError:
                continue
    return sorted(found)


def _strings(doc: Any, depth: int) -> Iterator[str]:
    if depth > 32:
        return
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, Mapping):
        for key, value in doc.items():
            if isinstance(key, str):
                yield key
            yield from _strings(value, depth + 1)
    elif isinstance(doc, list):
        for value in doc:
            yield from _strings(value, depth + 1)
