"""The change feed: what another replica changed, heard through PostgreSQL ``LISTEN``.

A writer announces ``kind key`` (``approval ap-…``, ``task_ended t-…``) inside the transaction
that makes the change; PostgreSQL delivers it on commit to every listening connection. One
thread per replica holds such a connection and hands each announcement to the listeners of its
kind. Its own announcements are skipped (each store has an origin id): the writing replica has
already acted. When the connection drops, announcements may be lost, so after reconnecting the
feed calls its resync listeners, which re-read what they wait on.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

import psycopg

__all__ = ["ChangeFeed"]

log = logging.getLogger(__name__)


class ChangeFeed:
    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], channel: str, *, retry_s: float
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._retry_s = retry_s
        self.origin = secrets.token_hex(6)
        self._listeners: dict[str, list[Callable[[str], None]]] = collections.defaultdict(list)
        self._resync: list[Callable[[], None]] = []
        self._closed = threading.Event()
        self.listening = threading.Event()
        self._thread: threading.Thread | None = None

    def payload(self, kind: str, key: str) -> str:
        return f"{self.origin} {kind} {key}"

    def subscribe(self, kind: str, listener: Callable[[str], None]) -> None:
        self._listeners[kind].append(listener)

    def on_resync(self, listener: Callable[[], None]) -> None:
        self._resync.append(listener)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="state-feed", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        connected_before = False
        while not self._closed.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    if connected_before:
                        log.info("state change feed reconnected; re-reading what is waited on")
                        self._call_resync()
                    connected_before = True
                    self.listening.set()
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._dispatch(note.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if not self._closed.is_set():
                    log.warning(
                        "state change feed lost its connection; reconnecting",
                        extra={"error": str(exc).strip().splitlines()[0] if str(exc) else ""},
                    )
                    self._closed.wait(self._retry_s)
        self.listening.clear()

    def _dispatch(self, payload: str) -> None:
        origin, _, rest = payload.partition(" ")
        kind, _, key = rest.partition(" ")
        if origin == self.origin or not key:
            return
        for listener in self._listeners.get(kind, ()):
            try:
                listener(key)
            except Exception:
                log.exception("a state change listener failed", extra={"kind": kind, "key": key})

    def _call_resync(self) -> None:
        for listener in self._resync:
            try:
                listener()
            except Exception:
                log.exception("a state resync listener failed")
