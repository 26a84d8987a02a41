"""What the bundle poller reports: a :class:`BundleEvents` listener and a :class:`BundleStatus`
snapshot, in the terms of OPA's status API (``bundles.<name>``), so the status and
decision-log exporters can build on them without knowing how bundles are fetched."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

__all__ = ["BundleError", "BundleEvents", "BundleStatus", "BundleStatusTracker"]

log = logging.getLogger(__name__)

# How many recent errors a status snapshot keeps (OPA reports the latest; we keep a few).
MAX_ERRORS = 10


@dataclass(frozen=True)
class BundleError:
    """One failure: ``code`` is stable (``bundle_download_failed``, ``bundle_signature_invalid``,
    ``bundle_invalid``, ``bundle_activation_failed``); ``message`` is for people."""

    code: str
    message: str
    time_ns: int


@dataclass(frozen=True)
class BundleStatus:
    """A bundle's state, as OPA's status API reports it (times in ns since the epoch; 0 = never)."""

    name: str
    active_revision: str = ""
    last_successful_download_ns: int = 0
    last_successful_activation_ns: int = 0
    last_request_ns: int = 0
    # OPA's last_successful_request: any answer that worked, a 304 included (a 304 is no
    # download: last_successful_download stays).
    last_successful_request_ns: int = 0
    errors: tuple[BundleError, ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        return bool(self.active_revision)


class BundleEvents(Protocol):
    """Callbacks from the poller (called on its thread; keep them short and non-blocking)."""

    def on_download(self, name: str, ok: bool, error: str = "") -> None: ...

    def on_activate(self, name: str, revision: str) -> None: ...

    def on_error(self, name: str, code: str, message: str) -> None: ...


class BundleStatusTracker:
    """Keeps the :class:`BundleStatus` of each bundle from the events and forwards them to
    listeners. Thread-safe; :meth:`status` returns an immutable snapshot."""

    def __init__(self, names: tuple[str, ...] = (), listeners: tuple[BundleEvents, ...] = ()):
        self._lock = threading.Lock()
        self._status = {n: BundleStatus(name=n) for n in names}
        self._listeners = list(listeners)

    def add_listener(self, listener: BundleEvents) -> None:
        with self._lock:
            self._listeners.append(listener)

    def status(self, name: str | None = None) -> BundleStatus:
        with self._lock:
            if name is None:
                name = next(iter(self._status), "")
            return self._status.get(name, BundleStatus(name=name))

    def all(self) -> tuple[BundleStatus, ...]:
        with self._lock:
            return tuple(self._status.values())

    def _update(self, name: str, **changes: object) -> None:
        current = self._status.get(name, BundleStatus(name=name))
        self._status[name] = replace(current, **changes)  # type: ignore[arg-type]

    def request(self, name: str) -> None:
        with self._lock:
            self._update(name, last_request_ns=time.time_ns())

    def on_download(self, name: str, ok: bool, error: str = "") -> None:
        with self._lock:
            if ok:
                now = time.time_ns()
                self._update(name, last_successful_download_ns=now, last_successful_request_ns=now)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.on_download(name, ok, error)
            except Exception:  # a listener's bug must not undo or block an activation
                log.exception("bundle event listener failed", extra={"event": "on_download"})

    def on_unchanged(self, name: str) -> None:
        """The server confirmed the active revision (304 or the same ETag): as OPA
        (``SetError(nil)``), the request succeeded and no error is reported any longer;
        nothing was downloaded. Listeners hear it as a successful download event."""
        with self._lock:
            self._update(name, last_successful_request_ns=time.time_ns(), errors=())
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.on_download(name, True)
            except Exception:  # a listener's bug must not block the poller
                log.exception("bundle event listener failed", extra={"event": "on_unchanged"})

    def on_activate(self, name: str, revision: str) -> None:
        with self._lock:
            self._update(
                name,
                active_revision=revision,
                last_successful_activation_ns=time.time_ns(),
                errors=(),
            )
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.on_activate(name, revision)
            except Exception:  # a listener's bug must not undo or block an activation
                log.exception("bundle event listener failed", extra={"event": "on_activate"})

    def on_error(self, name: str, code: str, message: str) -> None:
        with self._lock:
            current = self._status.get(name, BundleStatus(name=name))
            errors = (*current.errors, BundleError(code, message, time.time_ns()))[-MAX_ERRORS:]
            self._update(name, errors=errors)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.on_error(name, code, message)
            except Exception:  # a listener's bug must not undo or block an activation
                log.exception("bundle event listener failed", extra={"event": "on_error"})
