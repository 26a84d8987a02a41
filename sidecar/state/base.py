"""What the stores (approvals, tasks, budgets, MCP pins) need from a state backend.

The stores write portable SQL with ``?`` placeholders; a backend runs it. Row locks are
spelled ``db.for_update`` (empty on SQLite, whose write transactions are already exclusive),
and a change other replicas must hear about is announced with ``db.notify`` inside the
transaction that makes it (delivered on commit; nothing on SQLite, where one host's
processes poll instead).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sidecar.state.errors import StateBusy

__all__ = ["Conn", "Row", "StateDb"]

Row = Mapping[str, Any]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """The connection a transaction hands out (sqlite3's, or the PostgreSQL adapter)."""

    def execute(self, sql: str, params: Sequence[object] = ...) -> Cursor: ...

    def executemany(self, sql: str, params: Sequence[Sequence[object]]) -> Any: ...


class StateDb(abc.ABC):
    """One state store; thread-safe (stores call it from the state thread and others)."""

    backend: str = ""
    for_update: str = ""

    @abc.abstractmethod
    def transaction(self, *, durable: bool = True) -> contextlib.AbstractContextManager[Conn]:
        """One atomic unit: read-check-write without a race; ``durable=False`` may lose the
        last few writes in a power cut (counters), never a decision."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...

    def without_waiting(self) -> contextlib.AbstractContextManager[None]:
        """Run the work inside on the calling thread (the event loop) only where it need
        not wait: else :class:`StateBusy` (nothing written), and the caller takes the state
        thread; a refusal after something inside committed is a plain :class:`StateError`
        (redoing it would write twice). Does not nest. A networked store always waits for
        its server: it always refuses."""
        raise StateBusy(f"{self.description}: every call waits for the server")

    def write(self, sql: str, params: Sequence[object] = (), *, durable: bool = True) -> list[Row]:
        """One statement that writes, committed on its own; its ``RETURNING`` rows. A backend
        may send it in one round trip (no BEGIN/COMMIT around it)."""
        with self.transaction(durable=durable) as conn:
            return list(conn.execute(sql, tuple(params)).fetchall())

    def notify(self, conn: Conn, kind: str, key: str) -> None:  # noqa: B027 (optional)
        """Tell the other replicas ``kind`` changed for ``key``, on commit of ``conn``'s
        transaction."""

    def lock(self, conn: Conn, key: str) -> None:  # noqa: B027 (optional)
        """Hold a lock named ``key`` until ``conn``'s transaction ends, on every replica (a
        SQLite write transaction already excludes every other writer)."""

    def subscribe(self, kind: str, listener: Callable[[str], None]) -> None:  # noqa: B027 (optional)
        """Call ``listener(key)`` (in a feed thread) when another replica announces ``kind``.
        A backend without a change feed never calls it."""

    def on_resync(self, listener: Callable[[], None]) -> None:  # noqa: B027 (optional)
        """Call ``listener()`` when announcements may have been missed (the feed reconnected):
        re-read what is waited on."""

    @property
    def available(self) -> bool:
        """False while the store is known to be unreachable (calls needing it fail)."""
        return True

    @property
    def has_feed(self) -> bool:
        """Whether other replicas' changes are announced (else: poll)."""
        return False

    @property
    def description(self) -> str:
        """Where the store is, for messages: never a password."""
        return self.backend

    def start(self) -> None:  # noqa: B027 (optional)
        """Start background work (the change feed); after the sidecar's loop is up."""

    @abc.abstractmethod
    def close(self) -> None: ...
