"""``policy test --watch``: run again whenever the policy directory's content changes.

The directory is polled (a hash of every ``.rego`` and ``.json`` file in it, tests included),
so it works on any filesystem and in containers without inotify. A directory that does not
load while it is being edited is reported by the run and watched on.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["watch"]


def _revision(policy_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(policy_dir).rglob("*")):
        if path.suffix in (".rego", ".json") and path.is_file():
            try:
                digest.update(f"{path}\0".encode() + path.read_bytes() + b"\0")
            except OSError:  # removed or replaced while we read: the next poll sees it
                digest.update(f"{path}\0unreadable\0".encode())
    return digest.hexdigest()


def watch(
    policy_dir: Path,
    run: Callable[[], int],
    out: TextIO,
    *,
    interval_s: float = 0.3,
    stop: threading.Event | None = None,
) -> int:
    """Call ``run`` now and after every change until ``stop`` is set (or Ctrl-C); return the
    last run's status."""
    stop = stop or threading.Event()
    status = run()
    last = _revision(policy_dir)
    print(f"watching {policy_dir} for changes (Ctrl-C to stop)", file=out, flush=True)
    try:
        while not stop.wait(interval_s):
            current = _revision(policy_dir)
            if current == last:
                continue
            last = current
            print(f"\n--- {policy_dir} changed, running again ---", file=out, flush=True)
            status = run()
    except KeyboardInterrupt:
        pass
    return status
