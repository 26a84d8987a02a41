"""Turning downloaded bytes into the active policy: read, verify, compile, swap, keep.

Each step can refuse the bundle, and each refusal is reported (``BundleEvents.on_error`` with a
stable code, and the log) while the last good revision keeps serving: there is never a moment
without a policy once one was active.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sidecar.policy.bundle.archive import BundleFormatError, read_bundle
from sidecar.policy.bundle.engine import BundleEngine
from sidecar.policy.bundle.persist import BundleStore
from sidecar.policy.bundle.settings import BundleSettings
from sidecar.policy.bundle.signing import BundleSignatureError, verify_files
from sidecar.policy.bundle.status import BundleStatusTracker
from sidecar.policy.errors import PolicyLoadError

__all__ = ["BundleActivator", "BundleRejected"]

log = logging.getLogger(__name__)


class BundleRejected(PolicyLoadError):
    """A bundle that was not activated; ``code`` is the reported error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BundleActivator:
    settings: BundleSettings
    engine: BundleEngine
    tracker: BundleStatusTracker
    store: BundleStore | None = None
    # Whether this process writes the store (with server.workers, only the primary does).
    saves: bool = True

    def activate(self, blob: bytes, etag: str = "", *, persist: bool = True) -> str:
        """Activate ``blob``; returns its revision. Raises :class:`BundleRejected`."""
        name = self.settings.name
        source = self.settings.source
        try:
            bundle = read_bundle(blob, size_limit=source.size_limit_bytes)
            if source.signing is not None:
                verify_files(bundle.files, bundle.signatures, source.signing, self.settings.keys)
            elif bundle.signatures is not None:
                raise BundleSignatureError(
                    "the bundle is signed but bundles.signing is not configured "
                    "(verification key not provided)"
                )
            self.engine.activate(bundle.source(name))
        except BundleSignatureError as exc:
            raise self._reject("bundle_signature_invalid", exc) from None
        except BundleFormatError as exc:
            raise self._reject("bundle_invalid", exc) from None
        except PolicyLoadError as exc:
            raise self._reject("bundle_activation_failed", exc) from None
        except Exception as exc:  # any other failure (deep data, a bug): refused and reported
            raise self._reject("bundle_activation_failed", exc, by_type=True) from None
        if persist and self.saves and self.store is not None and source.persist:
            try:
                self.store.save(blob, etag)
            except OSError as exc:
                log.error("cannot persist the bundle", extra={"bundle": name, "error": str(exc)})
        self.tracker.on_activate(name, bundle.revision)
        log.info("policy bundle activated", extra={"bundle": name, "revision": bundle.revision})
        return bundle.revision

    def restore(self) -> str:
        """Activate the persisted bundle, if any and still good; its etag ("" if none). Never
        raises: whatever is on disk, the sidecar starts (and downloads the bundle)."""
        if self.store is None:
            return ""
        try:
            saved = self.store.load(self.settings.source.size_limit_bytes)
            if saved is None:
                return ""
            self.activate(saved.blob, saved.etag, persist=False)
        except BundleRejected:
            return ""
        except Exception as exc:  # reported by type; start without the persisted bundle
            self._reject("bundle_invalid", exc, by_type=True)
            return ""
        return saved.etag

    def _reject(self, code: str, exc: Exception, *, by_type: bool = False) -> BundleRejected:
        name = self.settings.name
        message = f"unexpected {type(exc).__name__}" if by_type else str(exc)
        self.tracker.on_error(name, code, message)
        log.error(
            "policy bundle rejected; the active revision stays",
            extra={
                "bundle": name,
                "code": code,
                "error": message,
                "active_revision": self.engine.revision,
            },
        )
        return BundleRejected(code, message)
