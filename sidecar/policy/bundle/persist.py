"""The last good bundle on disk (OPA's ``persist``): written after it activated, read at start
so a restart without the bundle server still serves it. The file is the downloaded tarball
itself, activated again on load through every check a download passes (so a changed file is
refused when ``signing`` is configured; unsigned, any valid bundle on disk is served).

The ETag is kept beside it with the tarball's SHA-256: an ETag whose digest does not match the
tarball on disk (a save interrupted, or two workers saving different revisions at once) is
dropped, so the first request downloads in full instead of being told ``304`` for a revision
that is not the one served. Saves take an exclusive lock and write unique temporary files
(``mkstemp``): containers sharing the volume are all PID 1.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BundleStore", "PersistedBundle"]


@dataclass(frozen=True)
class PersistedBundle:
    blob: bytes
    etag: str


class BundleStore:
    """``DIR/NAME/bundle.tar.gz`` and ``DIR/NAME/etag.json`` (``{"etag", "sha256"}``)."""

    def __init__(self, directory: Path, name: str) -> None:
        self._dir = directory / name

    @property
    def path(self) -> Path:
        return self._dir / "bundle.tar.gz"

    @property
    def etag_path(self) -> Path:
        return self._dir / "etag.json"

    def save(self, blob: bytes, etag: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"etag": etag, "sha256": hashlib.sha256(blob).hexdigest()}
        fd = os.open(self._dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one saver at a time: the pair stays together
            _replace(self.path, blob)
            _replace(self.etag_path, json.dumps(record).encode())
        finally:
            os.close(fd)  # releases the lock

    def load(self, size_limit: int) -> PersistedBundle | None:
        """The saved bundle, or None (none saved, or unreadable: then the server decides)."""
        try:
            if self.path.stat().st_size > size_limit:
                return None
            blob = self.path.read_bytes()
        except OSError:
            return None
        try:
            record = json.loads(self.etag_path.read_text())
        except (OSError, ValueError):
            record = None
        etag = ""
        if isinstance(record, dict) and record.get("sha256") == hashlib.sha256(blob).hexdigest():
            found = record.get("etag", "")
            etag = found if isinstance(found, str) else ""
        return PersistedBundle(blob, etag)


def _replace(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
