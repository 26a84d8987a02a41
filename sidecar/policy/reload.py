"""Hot reload of the embedded engine: poll the policy directory, and reload on SIGHUP.

A revision that fails to load is logged (once per bad revision) and rejected; the active one
stays. Compilation happens on this thread, never on a call's path.
"""

from __future__ import annotations

import logging
import threading

from sidecar.policy.embedded import EmbeddedEngine
from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.source import load_policy_dir

__all__ = ["PolicyReloader"]

log = logging.getLogger(__name__)


class PolicyReloader:
    def __init__(self, engine: EmbeddedEngine, interval_s: float) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rejected: str | None = None
        self.reloads = 0
        self.rejections = 0
        self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)

    def start(self) -> PolicyReloader:
        self._thread.start()
        return self

    def request(self) -> None:
        """Reload now (SIGHUP)."""
        self._wake.set()

    def reload_now(self) -> bool:
        try:
            changed = self._engine.reload()
        except PolicyLoadError as exc:
            try:
                revision = load_policy_dir(self._engine._dir).revision
            except PolicyLoadError:
                revision = str(exc)
            if revision != self._rejected:
                self._rejected = revision
                self.rejections += 1
                log.error(
                    "policy revision rejected; the active revision stays",
                    extra={"error": str(exc), "active_revision": self._engine.revision},
                )
            return False
        self._rejected = None  # also when a bad revision was reverted to the active one
        if changed:
            self.reloads += 1
        return changed

    @property
    def failing(self) -> bool:
        """The newest revision on disk was rejected (``agent_sidecar_policy_reload_failing``)."""
        return self._rejected is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = self._interval_s if self._interval_s > 0 else None
            self._wake.wait(timeout)
            self._wake.clear()
            if not self._stop.is_set():
                self.reload_now()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
