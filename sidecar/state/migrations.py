"""Versioned schema migrations, shipped with the package and applied when a store opens.

``migrations/<backend>/NNNN_name.sql``: one file per version, numbered from 1 without gaps,
the same numbers for both backends. Applying is one transaction that first takes a lock every
replica takes (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock), then
reads ``schema_migrations`` and runs only what is missing: several replicas starting at once
apply each version exactly once, and a second start changes nothing. A database that is newer
than this build (a later version recorded) is refused rather than written with an old schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from sidecar.state.errors import MigrationError

__all__ = ["LOCK_KEY", "Migration", "migrations", "statements"]

# pg_advisory_xact_lock key: "agentsid" as a 64-bit integer, the same for every replica.
LOCK_KEY = int.from_bytes(b"agentsid", "big") & 0x7FFF_FFFF_FFFF_FFFF

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(backend: str) -> list[Migration]:
    """The shipped migrations for ``backend`` (``sqlite`` or ``postgres``), in order."""
    folder = resources.files("sidecar.state").joinpath("migrations", backend)
    found = []
    for entry in folder.iterdir():
        match = _NAME_RE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError(f"the {backend} migrations shipped are not numbered 1..N")
    return found


def statements(sql: str) -> list[str]:
    """The statements of a migration file: ``--`` comments dropped, split at ``;`` line ends
    (migrations hold no ``;`` inside a statement)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def pending(applied: set[int], shipped: list[Migration], where: str) -> list[Migration]:
    """What is left to apply; refuses a database recording a version this build lacks."""
    newest = len(shipped)
    unknown = sorted(v for v in applied if v > newest)
    if unknown:
        raise MigrationError(
            f"{where}: the schema is at version {unknown[-1]}, newer than this build knows "
            f"({newest}); run the newer agent-sidecar, or restore a matching backup"
        )
    return [m for m in shipped if m.version not in applied]
