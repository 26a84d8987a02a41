"""One configured bundle, put together: status tracker, store, activator and poller.

``restore`` (at build, before listening) serves the persisted bundle at once; ``start`` begins
polling the server. Closing the engine stops the poller. With ``server.workers`` every worker
restores from the shared store but only the primary (``saves``) writes it."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from sidecar.policy.bundle.activate import BundleActivator
from sidecar.policy.bundle.download import BundlePoller
from sidecar.policy.bundle.engine import BundleEngine
from sidecar.policy.bundle.persist import BundleStore
from sidecar.policy.bundle.settings import BundleSettings
from sidecar.policy.bundle.status import BundleStatusTracker

__all__ = ["BundleRuntime"]


class BundleRuntime:
    def __init__(
        self, settings: BundleSettings, engine: BundleEngine, *, saves: bool = True
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tracker = BundleStatusTracker((settings.name,))
        store = None
        if settings.source.persist:
            store = BundleStore(settings.persistence_directory, settings.name)
        self.activator = BundleActivator(settings, engine, self.tracker, store, saves=saves)
        self.poller: BundlePoller | None = None
        self._etag = ""
        engine.attach(self)

    def restore(self) -> BundleRuntime:
        """Activate the persisted bundle, if there is a good one."""
        self._etag = self.activator.restore()
        return self

    def start(self, svid_context: Callable[[], ssl.SSLContext] | None = None) -> BundleRuntime:
        if self.poller is None:
            self.poller = BundlePoller(
                self.settings,
                self.activator,
                self.tracker,
                svid_context=svid_context,
                etag=self._etag,
            ).start()
        return self

    def stop(self, *, wait: bool = False) -> None:
        """Stop polling; ``wait``: until a round in progress has ended (not at shutdown,
        where a long poll may be held open)."""
        if self.poller is not None:
            self.poller.stop(wait=wait)
